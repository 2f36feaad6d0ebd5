"""The Markov prefetch model: learns chains, stays quiet on random streams, adapts, stays bounded."""

from __future__ import annotations

import random

from sutazai_hwopt.cache.prefetch import MarkovPredictor, PrefetchWorker


def test_learns_a_chain_and_follows_it_to_depth() -> None:
    """After a few repetitions of a chain the next keys are predicted in order."""
    m = MarkovPredictor(order=2)
    for _ in range(4):
        for k in ["plan", "search", "embed", "rank", "answer"]:
            m.observe("a", k)
    m.observe("a", "plan")
    assert m.predict("a", 3) == ["search", "embed", "rank"]


def test_quiet_on_a_random_stream() -> None:
    """On i.i.d. keys the escape estimate keeps almost every prediction below the confidence bar."""
    rng = random.Random(3)
    m = MarkovPredictor(order=2)
    predicted = 0
    for _ in range(20000):
        m.observe("a", rng.randrange(2000))
        predicted += len(m.predict("a", 3))
    assert predicted < 100


def test_other_agents_teach_a_new_agent() -> None:
    """An agent with no history of a context uses the table shared by all agents."""
    m = MarkovPredictor(order=1)
    for _ in range(5):
        m.observe("old", "x")
        m.observe("old", "y")
    m.observe("new", "x")
    assert m.predict("new", 1) == ["y"]


def test_decay_follows_a_changed_workflow() -> None:
    """When a step's successor changes, the new successor wins after a few observations."""
    m = MarkovPredictor(order=1, decay=0.5)
    for _ in range(20):
        m.observe("a", "s")
        m.observe("a", "old")
    for _ in range(4):
        m.observe("a", "s")
        m.observe("a", "new")
    m.observe("a", "s")
    assert m.predict("a", 1) == ["new"]


def test_contexts_are_bounded() -> None:
    """The number of contexts never exceeds max_contexts."""
    m = MarkovPredictor(order=2, max_contexts=100)
    for i in range(5000):
        m.observe(f"a{i % 3}", i)
    assert len(m._tables) <= 100


def test_worker_queue_is_bounded_and_drops() -> None:
    """Submissions beyond the queue are dropped and counted; the thread stops on close."""
    import threading

    gate = threading.Event()
    seen: list[object] = []

    def run(agent: str, key: object) -> None:
        gate.wait(10)
        seen.append(key)

    w = PrefetchWorker(run, queue_size=2)
    for i in range(10):
        w.submit("a", i)
    assert w.dropped >= 6
    gate.set()
    w.drain()
    assert seen and len(seen) <= 4
    w.close()
    assert not [t for t in threading.enumerate() if t.name == "sutazai-cache-prefetch"]
