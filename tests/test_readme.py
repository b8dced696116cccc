"""The README's two commands are the ones the project actually runs, and its first
example is the one the engine's tests run."""

import re
from pathlib import Path

from belvedere.agents.driven import AgentProjection
from belvedere.tables.table import Table

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", quick_start, flags=re.S)


def test_quick_start_is_exactly_two_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci/run").read_text()
    test_command = readme_commands()[1]
    assert f'TEST_COMMAND="{test_command}"' in ci


def test_readme_main_command_runs_the_demo_of_an_example_that_exists() -> None:
    main = readme_commands()[0]
    assert main.endswith("belvedere demo")
    assert (
        REPO / "belvedere" / "examples" / "shop" / "demo.py"
    ).is_file()  # run by tests/test_demo.py


def test_writing_an_app_leads_with_an_agent_on_the_engine() -> None:
    text = (REPO / "README.md").read_text()
    section = text.split("## Writing an app", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)[0]
    namespace: dict = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)
    total, revenue = namespace["total"], namespace["revenue"]
    assert isinstance(total, AgentProjection) and isinstance(revenue, Table)
    assert total.table is revenue
    # tests/test_agents.py and tests/faults/test_agent_faults.py run this very agent
    agent = code[code.index("@app.agent(orders)") :]
    assert agent in (REPO / "tests" / "apps" / "revenue.py").read_text()
