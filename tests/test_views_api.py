"""The HTTP query layer: reads, scans, tokens, status and errors; two workers on Kafka."""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from belvedere.streams.clients import NewRecord
from belvedere.views_api.auth import READ
from belvedere.views_api.operations import Route
from belvedere.views_api.params import Param
from belvedere.views_api.positions import decode_token, encode_token
from belvedere.views_api.routes import ROUTES
from tests.support.brokers import KAFKA_ONLY, Broker
from tests.support.fuzz import fuzz_spec
from tests.support.http import Answer, call
from tests.support.metrics import labelled, samples
from tests.support.worker import Worker, wait_for
from tests.test_projections import movements, total_ops

APP = "tests.apps.ledger:app"


def deposit(account: str, amount: int, owner: str = "owner-x") -> dict:
    data = {"account": account, "owner": owner, "amount": amount}
    return {"eventType": "Deposited", "eventVersion": 1, "data": data}


def tallies(n: int, seed: int) -> tuple[list[NewRecord], dict[int, int]]:
    """``n`` Tallied events over ints (some negative), and the count per int."""
    rng = random.Random(seed)
    records, counts = [], {}
    for _ in range(n):
        value = rng.randrange(-50, 250)
        counts[value] = counts.get(value, 0) + 1
        envelope = {"eventType": "Tallied", "eventVersion": 1, "data": {"n": value}}
        records.append(NewRecord(str(value).encode(), orjson.dumps(envelope), 0))
    return records, counts


def scan_all(url: str, limit: int, query: str = "") -> tuple[list, list[Answer]]:
    """Every row of a scan, page by page; and the answers."""
    rows, answers, cursor = [], [], None
    while True:
        page = call(f"{url}?limit={limit}{query}" + (f"&cursor={cursor}" if cursor else ""))
        answers.append(page)
        assert page.status == 200, page.raw
        rows += [(r["key"], r["value"]) for r in page.body["rows"]]
        cursor = page.body["next"]
        if cursor is None:
            return rows, answers


def serving_all(worker: Worker) -> dict:
    return worker.wait_until("/state", lambda s: s["ready"], what="every view serving")


ALLOWED_ORIGIN = "https://app.example"


def test_a_write_is_read_back_with_its_token_and_bad_requests_get_json_errors(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    ledger.args += ["--web-allowed-origins", f"{ALLOWED_ORIGIN}, https://other.example"]
    ledger.args += ["--web-allowed-hosts", "views.internal"]
    ledger.start()
    serving_all(ledger)
    url, topic = ledger.url, f"{unique_name}-movements"
    posted = call(f"{url}/events/{topic}", "POST", [deposit(f"acct-{i}", 20 + i) for i in range(8)])
    assert posted.status == 201, posted.raw
    token = posted.body["token"]
    assert posted.headers["X-Belvedere-Position"] == token
    assert len(posted.body["events"]) == 8
    for i in range(8):
        read = call(f"{url}/views/balances/acct-{i}?after={token}&timeout=20")
        assert read.status == 200, read.raw
        assert read.body == {"owner": "owner-x", "balance": 20 + i, "ops": 1}
        assert read.headers["X-Belvedere-Generation"] == "1"
        assert read.headers["X-Belvedere-Served-From"] == "serving"
        assert read.headers["X-Belvedere-Worker"] == url
        assert "X-Belvedere-Last-Event" in read.headers and "X-Belvedere-Lag" in read.headers
        assert read.headers["X-Request-Id"]
        # the position answered covers the write: as a token, it needs no wait
        again = call(
            f"{url}/views/balances/acct-{i}?after={read.headers['X-Belvedere-Position']}&timeout=0"
        )
        assert again.status == 200, again.raw
    assert call(f"{url}/views/balances?key=acct-3").body["balance"] == 23
    assert call(f"{url}/views/balances?key=rebuild").status == 404  # a key named like a sub-path
    given = call(f"{url}/views/balances/acct-1", headers={"X-Request-Id": "trace-me-1"})
    assert given.headers["X-Request-Id"] == "trace-me-1"

    # a token for a write not made yet: 504 with where the view is, after the timeout
    ahead = encode_token(
        {t: {p: o + 1000 for p, o in parts.items()} for t, parts in decode_token(token).items()}
    )
    late = call(f"{url}/views/balances/acct-0?after={ahead}&timeout=0.3")
    assert late.status == 504 and late.body["error"] == "not-yet-applied"
    assert late.headers["X-Belvedere-Position"]

    bad = {
        "/views/balances/nobody": (404, "no-such-key"),
        "/views/nothing/x": (404, "unknown-view"),
        "/views/balances?limit=abc": (400, "bad-parameter"),
        "/views/balances?limit=0": (400, "bad-parameter"),
        "/views/balances?cursor=@@": (400, "bad-parameter"),
        "/views/balances/acct-1?after=nonsense": (400, "bad-parameter"),
        "/views/balances/acct-1?max_lag=-1": (400, "bad-parameter"),
        "/views/balances/acct-1?after=" + token + "&timeout=nan": (400, "bad-parameter"),
        "/views/balances?timeout=-1": (400, "bad-parameter"),  # even with no token to wait for
        "/views/tallies/abc": (400, "bad-parameter"),
        "/views/tallies?prefix=1": (400, "bad-request"),
        "/views/balances/by/nope/1": (400, "bad-request"),
        f"/views/notes/x?after={token}": (400, "bad-token"),  # names another view's topic
        "/no/such/path": (404, "not-found"),
        "/views/balances/by/owner": (404, "not-found"),  # the value left out
    }
    for path, (status, kind) in bad.items():
        answer = call(url + path)
        assert (answer.status, answer.body["error"]) == (status, kind), (path, answer.raw)
        assert answer.headers["Content-Type"].startswith("application/json")
        assert set(answer.body) >= {"error", "detail"}

    before = call(f"{url}/views/balances?limit=1000").body["rows"]
    for body, kind in [
        (b"{not json", "bad-body"),
        ([], "bad-body"),
        ([deposit("acct-100", 5), {"eventType": "Deposited", "data": {}}], "bad-envelope"),
        ({"eventType": "Nope", "eventVersion": 1, "data": {}}, "unknown-type"),
        ({"eventType": "Deposited", "eventVersion": 1, "data": {"account": 5}}, "invalid-data"),
    ]:
        answer = call(f"{url}/events/{topic}", "POST", body)
        assert (answer.status, answer.body["error"]) == (400, kind), (body, answer.raw)
    assert call(f"{url}/events/nothing", "POST", deposit("a", 1)).status == 404
    sealed = call(f"{url}/events/{topic}", "POST", deposit("acct-0", 1)).body["token"]
    assert call(f"{url}/views/balances/acct-0?after={sealed}&timeout=20").body["balance"] == 21
    after = call(f"{url}/views/balances?limit=1000").body["rows"]
    assert len(after) == len(before)  # nothing of the refused requests was written

    check_out_of_range_keys(url)
    check_browser_rules(url, topic)
    check_hang_ups(ledger, topic)
    # last, as it starts a rebuild: an empty body is fine, as JSON
    assert call(f"{url}/views/notes/rebuild", "POST", b"").status == 202


def check_out_of_range_keys(url: str) -> None:
    """An int-keyed view's keys beyond 64 bits are a 400 naming the parameter."""
    for big in ("9223372036854775808", "-9223372036854775809", "1" + "0" * 30):
        for path, name in [
            (f"/views/tallies/{big}", "key"),
            (f"/views/tallies?key={quote(big)}", "key"),
            (f"/views/tallies?start={quote(big)}", "start"),
            (f"/views/tallies?end={quote(big)}", "end"),
        ]:
            answer = call(url + path)
            assert (answer.status, answer.body["error"]) == (400, "bad-parameter"), answer.raw
            assert answer.body["detail"].startswith(f"{name} "), answer.raw
    assert call(f"{url}/views/tallies/9223372036854775807").status == 404  # in range: no row
    assert call(f"{url}/views/tallies?start=-9223372036854775808").status == 200


def check_browser_rules(url: str, topic: str) -> None:
    """Host names the worker; writes are JSON from its own (or a listed) origin; CORS for
    the listed origin only; 405 says what is allowed."""
    for host in ("evil.example", "evil.example:80", "127.0.0.1.nip.io"):
        for path in ("/health", "/views/balances/acct-1"):
            answer = call(url + path, headers={"Host": host})
            assert (answer.status, answer.body["error"]) == (421, "misdirected"), answer.raw
    named = ("localhost:1", "127.0.0.1", "[::1]:6066", "10.1.2.3:8080", "LOCALHOST")
    for host in (*named, socket.gethostname(), "views.internal", "Views.Internal.:443"):
        assert call(url + "/health", headers={"Host": host}).status == 200, host
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # no Host at all
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        assert sock.makefile("rb").readline().split()[1] == b"200"

    write = f"{url}/events/{topic}"
    plain = call(write, "POST", deposit("acct-x", 1), headers={"Content-Type": "text/plain"})
    assert (plain.status, plain.body["error"]) == (415, "unsupported-media-type"), plain.raw
    empty = call(f"{url}/views/notes/rebuild", "POST", b"", headers={"Content-Type": ""})
    assert empty.status == 415, empty.raw  # a rebuild too, with no body
    for origin in ("http://evil.example", "null", url.replace("127.0.0.1", "localhost")):
        foreign = call(write, "POST", deposit("acct-x", 1), headers={"Origin": origin})
        assert (foreign.status, foreign.body["error"]) == (403, "forbidden-origin"), origin
    assert call(f"{url}/views/balances/acct-x").status == 404  # none of them was written
    own = call(write, "POST", deposit("acct-x", 1), headers={"Origin": url})
    assert own.status == 201 and "Access-Control-Allow-Origin" not in own.headers
    listed = call(write, "POST", deposit("acct-x", 1), headers={"Origin": ALLOWED_ORIGIN})
    assert listed.status == 201 and listed.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert "Origin" in listed.headers["Vary"]
    assert "X-Belvedere-Position" in listed.headers["Access-Control-Expose-Headers"]

    asking = {"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"}
    preflight = call(write, "OPTIONS", headers=asking)
    assert preflight.status == 204 and preflight.headers["Access-Control-Allow-Origin"] == (
        ALLOWED_ORIGIN
    )
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    stranger = call(write, "OPTIONS", headers={**asking, "Origin": "http://evil.example"})
    assert stranger.status == 405 and "Access-Control-Allow-Origin" not in stranger.headers
    read = call(f"{url}/views", headers={"Origin": "http://evil.example"})
    assert read.status == 200 and "Access-Control-Allow-Origin" not in read.headers

    for method, path in [("DELETE", "/views"), ("PUT", f"/events/{topic}"), ("GET", "/commands/x")]:
        answer = call(url + path, method)
        assert (answer.status, answer.body["error"]) == (405, "method-not-allowed"), answer.raw
        assert answer.headers["Allow"], answer.headers


def check_hang_ups(worker: Worker, topic: str) -> None:
    """A client that sends half its body and hangs up: no 500 counted, no traceback."""
    routes = ("/events/{topic}", "/views/{view}/rebuild")

    def refused() -> list[float]:
        found = samples(call(worker.url + "/metrics").raw.decode())
        server_errors = [k for k in found if 'method="POST"' in k and 'status="5xx"' in k]
        assert not server_errors, server_errors
        return [
            found.get(
                "belvedere_http_request_duration_seconds_count"
                f'{{method="POST",route="{route}",status="4xx"}}',
                0,
            )
            for route in routes
        ]

    before = refused()
    body = orjson.dumps(deposit("acct-half", 1))
    for path in (f"/events/{topic}", "/views/notes/rebuild"):
        with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as sock:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{worker.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body) * 2}\r\n\r\n"
            )
            sock.sendall(head.encode() + body)
    wait_for(
        lambda: [n - b for n, b in zip(refused(), before, strict=True)] == [1, 1],
        timeout=30,
        what="both hang-ups counted (as 499, not 500)",
    )
    log = worker.logfile.read_text()
    assert "Connection lost" not in log and "Error handling request" not in log, log[-3000:]
    assert f"POST /events/{topic} failed" not in log, log[-3000:]


def test_scans_and_index_lookups_page_through_every_row_in_key_order(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    records, fold = movements(3_000, accounts=400, seed=31)
    broker.produce(f"{unique_name}-movements", records)
    ints, counts = tallies(2_000, seed=32)
    broker.produce(f"{unique_name}-tallies", ints)
    ledger.start()
    ledger.wait_until("/state", lambda s: s["ready"] and total_ops(s) == 3_000, what="the fold")
    url = ledger.url
    wait_for(
        lambda: sum(v for _, v in scan_all(f"{url}/views/tallies", 1000)[0]) == 2_000,
        timeout=60,
        what="every tally",
    )

    rows, answers = scan_all(f"{url}/views/balances", 37)
    assert rows == sorted(fold.items()) and len(answers) > 5
    prefix, _ = scan_all(f"{url}/views/balances", 10, "&prefix=acct-1")
    assert prefix == sorted((k, v) for k, v in fold.items() if k.startswith("acct-1"))
    ranged, _ = scan_all(f"{url}/views/balances", 10, "&start=acct-2&end=acct-3")
    assert ranged == sorted((k, v) for k, v in fold.items() if "acct-2" <= k < "acct-3")
    owned, _ = scan_all(f"{url}/views/balances/by/owner/owner-3", 7)
    assert owned == sorted((k, v) for k, v in fold.items() if v["owner"] == "owner-3")

    numbers, _ = scan_all(f"{url}/views/tallies", 25)
    assert numbers == sorted(counts.items())  # ints in numeric order, negatives first
    between, _ = scan_all(f"{url}/views/tallies", 25, "&start=-10&end=10")
    assert between == sorted((k, v) for k, v in counts.items() if -10 <= k < 10)
    for n in random.Random(3).sample(sorted(counts), 20):
        assert call(f"{url}/views/tallies/{n}").body == counts[n]


def test_scans_and_index_lookups_wait_for_a_token_or_answer_504(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    ledger.start()
    serving_all(ledger)
    url, topic = ledger.url, f"{unique_name}-movements"
    for round_ in range(3):  # each write seen by the scan and the lookup given its token
        owner = f"owner-r{round_}"
        posted = call(
            f"{url}/events/{topic}", "POST", [deposit(f"w{round_}-{i}", i, owner) for i in range(6)]
        )
        token = posted.body["token"]
        page = call(f"{url}/views/balances?after={token}&timeout=20&limit=1000")
        assert page.status == 200, page.raw
        rows = {r["key"]: r["value"] for r in page.body["rows"]}
        assert [rows[f"w{round_}-{i}"]["balance"] for i in range(6)] == list(range(6))
        owned = call(f"{url}/views/balances/by/owner/{owner}?after={token}&timeout=20")
        assert owned.status == 200, owned.raw
        assert [r["key"] for r in owned.body["rows"]] == [f"w{round_}-{i}" for i in range(6)]
        # the position a scan answers covers the write: as a token, it needs no wait
        again = call(f"{url}/views/balances?after={page.headers['X-Belvedere-Position']}&timeout=0")
        assert again.status == 200, again.raw

    ahead = encode_token(
        {t: {p: o + 1000 for p, o in parts.items()} for t, parts in decode_token(token).items()}
    )
    for path in ("/views/balances", "/views/balances/by/owner/owner-r2"):
        late = call(f"{url}{path}?after={ahead}&timeout=0.3")
        assert (late.status, late.body["error"]) == (504, "not-yet-applied"), (path, late.raw)
        assert "rows" not in late.body
        assert decode_token(late.headers["X-Belvedere-Position"]) == decode_token(
            page.headers["X-Belvedere-Position"]
        )


DOCS = Path(__file__).parent.parent / "docs" / "http.md"


def documented_metrics() -> dict[str, tuple[str, set[str]]]:
    """docs/http.md's Metrics table: each family's name, type and labels."""
    table = DOCS.read_text().split("## Metrics", 1)[1].split("\n\n", 2)[1]
    found = {}
    for row in table.splitlines()[2:]:
        names, kind, labels = (cell.strip() for cell in row.strip("|").split("|"))
        labels = re.sub(r"\([^)]*\)", "", labels)  # what follows a label explains it
        for name in re.findall(r"`([a-z_]+)`", names):
            found[name] = (kind.split()[0], set(re.findall(r"`([a-z_]+)`", labels)))
    return found


def check_documented_metrics(text: str) -> None:
    """Each family docs/http.md lists is exposed with its type, its samples with its labels."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    documented = documented_metrics()
    assert len(documented) == 18, documented
    for name, (kind, labels) in documented.items():
        family = families[name.removesuffix("_total") if kind == "counter" else name]
        assert family.type == kind, (name, family.type)
        assert family.samples or name == "belvedere_dead_letters_total", name  # none here
        for sample in family.samples:
            extra = {"le"} if sample.name.endswith("_bucket") else set()
            assert set(sample.labels) == labels | extra, (name, sample)
    assert len(families) == len(documented), sorted(set(families) - set(documented))


def test_views_health_ready_and_metrics_describe_the_worker(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    records, fold = movements(1_000, accounts=50, seed=33)
    broker.produce(f"{unique_name}-movements", records)
    ledger.start()
    assert wait_for(lambda: call(ledger.url + "/health").status == 200, timeout=60, what="up")
    wait_for(lambda: call(ledger.url + "/ready").status == 200, timeout=90, what="ready")
    ledger.wait_until("/state", lambda s: s["ready"] and total_ops(s) == 1_000, what="the fold")

    listed = call(ledger.url + "/views").body
    views = {v["name"]: v for v in listed["views"]}
    assert set(views) == {"activity", "balances", "notes", "owners", "revenue", "tallies"}
    balances = views["balances"]
    assert balances["state"] == "serving" and balances["generation"] == 1
    assert balances["keys"] == len(fold) and balances["indexes"] == ["owner"]
    assert set(balances["partitions"]) == {"0", "1", "2", "3"}
    assert all(p["lag"] == 0 for p in balances["partitions"].values())
    assert sum(sum(p["position"].values()) for p in balances["partitions"].values()) == 1_000
    assert listed["workers"] == [ledger.url] and listed["unreachable"] == []
    assert balances["deadLetters"] == {"total": 0, "kinds": {}}

    for _ in range(5):
        call(ledger.url + "/views/balances/acct-1")
    metrics = call(ledger.url + "/metrics")
    assert metrics.status == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    check_documented_metrics(metrics.raw.decode())
    found = samples(metrics.raw.decode())
    assert found['belvedere_events_processed_total{view="balances"}'] == 1_000
    assert found[labelled("belvedere_fold_events_total", view="balances", mode="live")] == 1_000
    assert found[labelled("belvedere_fold_seconds_total", view="balances", mode="live")] > 0
    assert not [k for k in found if k.startswith("belvedere_fold") and 'mode="rebuild"' in k]
    assert not [k for k in found if k.startswith("belvedere_dead_letters_total")]
    rows = sum(
        v
        for k, v in found.items()
        if k.startswith("belvedere_view_rows{") and 'view="balances"' in k
    )
    assert rows == len(fold)
    reads = 'belvedere_http_request_duration_seconds_count{method="GET",route="/views/{view}/{key}",status="2xx"}'
    assert found[reads] >= 5


def test_an_api_token_guards_reads_and_posts_but_not_health(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    broker.create_ledger_topics(unique_name)
    worker = workers(APP, {"LEDGER_NAME": unique_name, "BELVEDERE_API_TOKEN": "s3cret"}).start()
    wait_for(lambda: call(worker.url + "/ready").status == 200, timeout=90, what="ready")
    for path in ("/views", "/views/balances", "/views/balances/x", "/metrics"):
        assert call(worker.url + path).status == 401, path
        assert call(worker.url + path, headers={"Authorization": "Bearer nope"}).status == 403
        right = call(worker.url + path, headers={"Authorization": "Bearer s3cret"})
        assert right.status in (200, 404), (path, right.raw)
    post = call(f"{worker.url}/events/{unique_name}-movements", "POST", deposit("a", 1))
    assert post.status == 401
    assert call(worker.url + "/health").status == 200
    assert "s3cret" not in worker.logfile.read_text()


# -- two workers on Kafka ----------------------------------------------------------------------


def start_pair(broker: Broker, workers: Callable[..., Worker], name: str) -> list[Worker]:
    env = {"LEDGER_NAME": name}
    pair = [workers(APP, dict(env), data_dir=d).start() for d in ("first", "second")]

    def split() -> bool:
        parts = [w.get("/partitions") for w in pair]
        if not all(parts):
            return False
        served = [
            {p for p, s in part["balances"]["active"].items() if s["state"] == "serving"}
            for part in parts
        ]
        return all(served) and set.union(*served) == {"0", "1", "2", "3"}

    wait_for(split, timeout=120, what="the partitions split over two serving workers")
    return pair


@KAFKA_ONLY
def test_two_workers_answer_any_key_merge_scans_and_read_your_writes_through_a_forward(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    broker.create_ledger_topics(unique_name)
    records, fold = movements(4_000, accounts=200, seed=41)
    broker.produce(f"{unique_name}-movements", records)
    ints, counts = tallies(1_000, seed=42)
    broker.produce(f"{unique_name}-tallies", ints)
    pair = start_pair(broker, workers, unique_name)

    def everything() -> bool:
        rows = scan_all(f"{pair[0].url}/views/balances", 500)[0]
        tallied = scan_all(f"{pair[0].url}/views/tallies", 500)[0]
        return sum(v["ops"] for _, v in rows) == 4_000 and sum(v for _, v in tallied) == 1_000

    wait_for(everything, timeout=120, what="every event of both topics folded")
    for worker in pair:
        answered_by = set()
        for key, row in fold.items():
            read = call(f"{worker.url}/views/balances/{quote(key)}")
            assert read.status == 200 and read.body == row, (key, read.raw)
            answered_by.add(read.headers["X-Belvedere-Worker"])
        assert answered_by == {w.url for w in pair}  # some answered here, some forwarded
        # a client's own X-Belvedere-Forwarded is not trusted: the read is still forwarded
        elsewhere = next(
            key
            for key in fold
            if call(f"{worker.url}/views/balances/{quote(key)}").headers["X-Belvedere-Worker"]
            != worker.url
        )
        for forged in ("1", f"{int(time.time())}.{'0' * 64}", "0." + "a" * 64):
            read = call(
                f"{worker.url}/views/balances/{quote(elsewhere)}",
                headers={"X-Belvedere-Forwarded": forged},
            )
            assert read.status == 200 and read.body == fold[elsewhere], (forged, read.raw)
            assert read.headers["X-Belvedere-Worker"] != worker.url, forged
        for n, count in counts.items():
            assert call(f"{worker.url}/views/tallies/{n}").body == count, n
        rows, _ = scan_all(f"{worker.url}/views/balances", 23)
        assert rows == sorted(fold.items())
        owned, _ = scan_all(f"{worker.url}/views/balances/by/owner/owner-4", 5)
        assert owned == sorted((k, v) for k, v in fold.items() if v["owner"] == "owner-4")
        numbers, _ = scan_all(f"{worker.url}/views/tallies", 40)
        assert numbers == sorted(counts.items())

    # keys that need escaping in a URL keep their meaning through a forward
    odd = ["a/b", "x?y", "z#w", "sp ace", "ü-1", "100%"]
    posted = call(
        f"{pair[0].url}/events/{unique_name}-movements", "POST", [deposit(k, 7) for k in odd]
    )
    for worker in pair:  # each key is forwarded from one of the two
        for key in odd:
            got = call(
                f"{worker.url}/views/balances/{quote(key, safe='')}?after={posted.body['token']}"
            )
            assert got.status == 200 and got.body["balance"] == 7, (key, got.raw)

    # a caller that accepts staleness is answered from the local standby, without a forward
    first, second = pair

    def standing() -> dict | None:
        parts = second.get("/partitions")["balances"]
        served_by_first = {str(p) for p in range(4)} - set(parts["active"])
        lags = parts["standbyLag"]
        ok = served_by_first and all(lags.get(p) == 0 for p in served_by_first)
        return parts if ok else None

    wait_for(standing, timeout=60, what="the second worker's standbys caught up")
    remote = [k for k in fold if call(f"{second.url}/views/balances/{k}").headers[
        "X-Belvedere-Worker"] == first.url][:20]  # fmt: skip
    assert remote
    for key in remote:
        stale = call(f"{second.url}/views/balances/{key}?max_lag=0")
        assert stale.status == 200 and stale.body == fold[key], stale.raw
        assert stale.headers["X-Belvedere-Served-From"] == "standby"
        assert stale.headers["X-Belvedere-Worker"] == second.url

    # read-your-writes: written through one worker, read at once through the other
    writer, reader = pair
    forwarded = 0
    for i, key in enumerate(sorted(fold)[:40]):
        posted = call(f"{writer.url}/events/{unique_name}-movements", "POST", deposit(key, 1000))
        assert posted.status == 201, posted.raw
        read = call(f"{reader.url}/views/balances/{key}?after={posted.body['token']}&timeout=20")
        assert read.status == 200 and read.body["balance"] == fold[key]["balance"] + 1000, read.raw
        forwarded += read.headers["X-Belvedere-Worker"] != reader.url
        if i % 10 == 0:  # a scan with the token waits on every worker too
            page = call(f"{reader.url}/views/balances?after={posted.body['token']}&limit=500")
            assert dict((r["key"], r["value"]) for r in page.body["rows"])[key]["balance"] == (
                fold[key]["balance"] + 1000
            )
    assert forwarded > 0
    # a position not applied yet: a scan, a lookup and a feed wait on both workers, then 504
    ahead = encode_token(
        {
            t: {p: o + 1000 for p, o in parts.items()}
            for t, parts in decode_token(posted.body["token"]).items()
        }
    )
    for path in ("/views/balances", "/views/balances/by/owner/owner-4", "/views/balances/changes"):
        late = call(f"{reader.url}{path}?after={ahead}&timeout=0.5")
        assert (late.status, late.body["error"]) == (504, "not-yet-applied"), (path, late.raw)

    order = {"eventType": "OrderPlaced", "eventVersion": 1}
    placed = call(
        f"{writer.url}/events/{unique_name}-orders",
        "POST",
        [{**order, "data": {"orderId": f"o-{i}", "userId": "u-7", "amount": 5}} for i in range(6)],
    )
    read = call(f"{reader.url}/views/revenue/u-7?after={placed.body['token']}&timeout=30")
    assert read.status == 200 and read.body == 30, read.raw  # through the re-keyed view


@KAFKA_ONLY
def test_when_a_worker_dies_the_other_takes_over_and_reads_meanwhile_get_503_not_500(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    broker.create_ledger_topics(unique_name)
    records, fold = movements(3_000, accounts=120, seed=43)
    broker.produce(f"{unique_name}-movements", records)
    first, second = start_pair(broker, workers, unique_name)
    wait_for(
        lambda: sum(v["ops"] for _, v in scan_all(f"{second.url}/views/balances", 500)[0]) == 3_000,
        timeout=120,
        what="every event folded",
    )
    keys = sorted(fold)
    answers: list[Answer] = []
    stopping = threading.Event()

    def read_loop() -> None:
        i = 0
        while not stopping.is_set():
            answers.append(call(f"{second.url}/views/balances/{keys[i % len(keys)]}", timeout=30))
            i += 1

    reader = threading.Thread(target=read_loop, daemon=True)
    reader.start()
    wait_for(lambda: len(answers) > 50, timeout=30, what="reads before the kill")
    first.kill()

    def all_here() -> bool:
        return all(
            (a := call(f"{second.url}/views/balances/{k}")).status == 200
            and a.headers["X-Belvedere-Worker"] == second.url
            and a.body == fold[k]
            for k in keys
        )

    wait_for(all_here, timeout=120, what="the survivor answering every key itself")
    stopping.set()
    reader.join(60)
    statuses = {a.status for a in answers}
    assert statuses <= {200, 503}, [a.raw for a in answers if a.status not in (200, 503)][:3]
    for answer in answers:
        if answer.status == 503:
            assert answer.headers.get("Retry-After") and answer.body["error"], answer.raw


def test_fuzzing_the_openapi_spec_finds_no_server_error(
    broker: Broker, ledger: Worker, unique_name: str, tmp_path: Path
) -> None:
    """Every schemathesis check, with tokens set: no 500, no undocumented answer, no request
    the spec allows refused (see tests/support/fuzz.toml), none it forbids accepted."""
    records, _ = movements(500, accounts=40, seed=51)
    broker.produce(f"{unique_name}-movements", records)
    ledger.env["BELVEDERE_API_TOKEN"] = ledger.env["BELVEDERE_ADMIN_TOKEN"] = "fuzz-token"
    ledger.start()
    wait_for(lambda: call(ledger.url + "/ready").status == 200, timeout=90, what="ready")
    # no origins configured: no CORS, for any origin
    asking = {"Origin": "http://evil.example", "Authorization": "Bearer fuzz-token"}
    for method in ("GET", "OPTIONS"):
        probe = call(ledger.url + "/views", method, headers=asking)
        assert "Access-Control-Allow-Origin" not in probe.headers, probe.headers
    spec = call(ledger.url + "/openapi.json").body
    assert spec["openapi"].startswith("3.") and "/views/{view}/{key}" in spec["paths"]
    assert spec["paths"]["/views/{view}"]["get"]["parameters"][0]["schema"]["enum"] == [
        "activity",
        "balances",
        "notes",
        "owners",
        "revenue",
        "tallies",
    ]
    # an event stream never ends, so it cannot be fuzzed this way (test_changes.py)
    only = ["--exclude-path", "/views/{view}/changes"]
    assert fuzz_spec(ledger.url, tmp_path, examples=40, seed=5, only=only, token="fuzz-token") > 300
    assert call(ledger.url + "/ready").status == 200  # and the worker still serves


def test_a_route_is_declared_with_exactly_the_path_parameters_its_path_has() -> None:
    """What the spec says a path takes cannot drift from the path aiohttp routes by."""
    for route in ROUTES:
        assert {p.name for p in route.parameters if p.where == "path"} == set(
            re.findall(r"\{([^{}]+)\}", route.path)
        ), route.path
    view = Param("view", "a view", "path")
    with pytest.raises(
        ValueError, match=r"declares path parameters \['view'\].*has \['key', 'view'\]"
    ):
        Route("GET", "/views/{view}/{key}", ROUTES[0].handler, READ, parameters=(view,))
