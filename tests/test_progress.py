"""Long stages report progress: images/s and ETA on the terminal and a Prefect progress artifact that the
run page shows as a bar, here read back from the local ephemeral server."""
import asyncio


def test_progress_artifact_and_terminal_line(prefect_harness, caplog):
    from prefect import flow, get_client

    from flows.common import Progress

    @flow
    def counted():
        prog = Progress("sample", total=8)
        return [prog.advance(4, "block 1/2"), prog.advance(4, "block 2/2")]

    lines = counted()
    assert lines[0].startswith("sample: block 1/2, 4/8 images, ") and " img/s, ETA " in lines[0]
    assert lines[1].endswith("ETA 0 s")

    async def latest():
        async with get_client() as client:  # the REST filter: the client's helper sends nulls the server refuses
            r = await client.request("POST", "/artifacts/filter", json={"artifacts": {"key": {"any_": ["sample-progress"]}},
                                                                        "limit": 10, "offset": 0, "sort": "UPDATED_DESC"})
            return [(a["type"], a["data"]) for a in r.json()]
    assert ("progress", 100) in asyncio.run(latest())
