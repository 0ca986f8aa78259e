from proxy.apis import classify
from proxy.exchange import Exchange, Outcome, RunEvent, utcnow
from proxy.observers import Observer, Observers
from proxy.testing.replay import Capture, replay


class Broken(Observer):
    name = "broken"

    def exchange_started(self, ex):
        raise RuntimeError("observer bug")

    def run_event(self, ex, event):
        raise ValueError("observer bug")


def _exchange():
    return Exchange(classify("POST", "/v1/threads/runs"), "POST", "/v1/threads/runs", "", None, b"{}")


def test_a_failing_observer_is_isolated_counted_and_reported(caplog):
    capture = Capture()
    reported = []
    observers = Observers([Broken(), capture], on_error=lambda name, hook: reported.append((name, hook)))
    replay(observers, _exchange(), [])
    assert [hook for hook, _ in capture.calls] == ["exchange_started", "response_started", "exchange_finished"]
    assert observers.failures[("broken", "exchange_started")] == 1
    assert reported == [("broken", "exchange_started")]
    assert "observer broken failed in exchange_started" in caplog.text


def test_exchange_finished_exactly_once():
    capture = Capture()
    ex = _exchange()
    replay(capture, ex, [], Outcome.TRUNCATED)
    assert not ex.finish(Outcome.COMPLETED)
    assert ex.outcome is Outcome.TRUNCATED
    assert [h for h, _ in capture.calls].count("exchange_finished") == 1


def test_hooks_are_called_in_order_inherited_ones_too_and_only_where_defined():
    calls = []

    class Events(Observer):
        name = "events"

        def run_event(self, ex, event):
            calls.append(("events", event.seq))

    class Inherits(Events):  # its run_event is Events': still a hook to call
        name = "inherits"

        def exchange_finished(self, ex):
            calls.append(("inherits", "finished"))

    observers = Observers([Events(), Inherits(), Observer()])
    ex = _exchange()
    replay(observers, ex, [RunEvent(0, "thread.created", "{}", None, utcnow())])
    assert calls == [("events", 0), ("events", 0), ("inherits", "finished")]
    assert [o.name for o, _ in observers._run_event] == ["events", "inherits"]  # the no-op base is skipped


def test_a_run_of_deltas_fans_out_in_one_call_and_a_failure_is_isolated():
    got = []

    class Raw(Observer):
        name = "raw"

        def deltas(self, ex, deltas):
            got.append(deltas)

    class BrokenRaw(Observer):
        name = "broken-raw"

        def deltas(self, ex, deltas):
            raise RuntimeError("observer bug")

    observers = Observers([BrokenRaw(), Raw(), Observer()])
    deltas = (3, 2, utcnow(), b'event: thread.message.delta\ndata: {"id":"msg_1"}\n\n'
                              b'event: thread.message.delta\ndata: {}\n\n')
    observers.deltas(_exchange(), deltas)
    assert got == [deltas]
    assert observers.failures[("broken-raw", "deltas")] == 1
    assert [o.name for o, _ in observers._deltas] == ["broken-raw", "raw"]
