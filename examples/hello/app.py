"""The smallest useful Belvedere app: page visits counted into a RocksDB table, served over HTTP.

Run it with ``belvedere worker examples.hello.app:app`` and open http://127.0.0.1:6066/visits/.
A timer stands in for real traffic, so there is something to see on the embedded broker.
"""

import random

import belvedere

app = belvedere.App("hello")

PAGES = ["/", "/pricing", "/docs", "/blog", "/about"]

visits = app.topic("page-visits", key_type=str, partitions=4)
visits_per_page = app.Table("visits-per-page", default=int, partitions=4)


@app.agent(visits)
async def count_visits(stream):
    async for page, _visit in stream.items():
        visits_per_page[page] += 1


@app.timer(interval=0.2)
async def simulate_traffic():
    await visits.send(key=random.choice(PAGES), value={"user": f"user-{random.randrange(100)}"})


@app.page("/visits/")
async def all_visits(web, request):
    if not app.ready:  # still restoring the table from its changelog
        return web.json(
            {"error": "recovering, try again"}, status=503, headers={"Retry-After": "1"}
        )
    return web.json(dict(visits_per_page.items()))


@app.task
async def say_where():
    url = str(app.conf.canonical_url).rstrip("/")
    print(f"belvedere: serving the view at {url}/visits/", flush=True)
