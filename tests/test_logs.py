import io
import json
import logging

import pytest

from tensile import logs


def test_json_lines_carry_fields_and_never_clash_with_record_attributes() -> None:
    record = logging.LogRecord("tensile.pods", logging.INFO, "f", 1, "created %s", ("x",), None)
    for k, v in logs.fields("ns/web-0", cluster="c1").items():
        setattr(record, k, v)
    out = json.loads(logs.JsonFormatter().format(record))
    assert out["msg"] == "created x" and out["namespace"] == "ns" and out["pod"] == "web-0"
    assert out["cluster"] == "c1" and out["logger"] == "tensile.pods"


def test_fields_work_as_logging_extra(caplog: object) -> None:
    logger = logging.getLogger("tensile.test")
    logger.warning("x", extra=logs.fields("ns/obj", kind="object"))  # must not raise





def _record(level: int, msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("tensile.pods", level, "f", 1, msg, (), None)
    for k, v in extra.items():
        setattr(record, k, v)
    return record


def test_text_lines_look_like_klog_and_carry_the_fields() -> None:
    line = logs.TextFormatter().format(_record(logging.INFO, "created lower pod", namespace="ns", pod="web-0",
                                               cluster="c1", grace=30))
    assert line.startswith("I") and " tensile.pods] created lower pod " in line
    assert 'namespace="ns" pod="web-0" cluster="c1" grace=30' in line
    assert logs.TextFormatter().format(_record(logging.WARNING, "x")).startswith("W")
    assert " V4 " in logs.TextFormatter().format(_record(logs.V(4), "debug line"))


def test_json_lines_say_the_verbosity_of_debug_lines() -> None:
    out = json.loads(logs.JsonFormatter().format(_record(logs.V(6), "GET /api/v1/pods 200")))
    assert out["level"] == "debug" and out["v"] == 6


@pytest.mark.parametrize(("flag", "shown", "hidden"), [("0", 0, 2), ("2", 2, 4), ("4", 4, 5), ("6", 6, 7),
                                                       ("debug", 10, None), ("info", 0, 1)])
def test_verbosity_shows_lines_up_to_its_level(flag: str, shown: int, hidden: int | None) -> None:
    stream = io.StringIO()
    logs.setup(flag, "json", stream)
    log = logging.getLogger("tensile.test.verbosity")
    log.log(logs.V(shown), "shown")
    if hidden is not None:
        log.log(logs.V(hidden), "hidden")
    lines = stream.getvalue().splitlines()
    assert [json.loads(x)["msg"] for x in lines] == ["shown"]


def test_warning_level_hides_info_and_bad_levels_are_refused() -> None:
    stream = io.StringIO()
    logs.setup("warning", "text", stream)
    logging.getLogger("tensile.test").info("hidden")
    logging.getLogger("tensile.test").warning("shown")
    assert stream.getvalue().count("\n") == 1 and "shown" in stream.getvalue()
    with pytest.raises(ValueError):
        logs.setup("loud")
    with pytest.raises(ValueError):
        logs.setup(0, "xml")


def test_auto_format_is_text_on_a_terminal_and_json_otherwise() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    logs.setup(0, "auto", tty)
    logging.getLogger("tensile.test").info("hello")
    logs.setup(0, "auto", pipe)
    logging.getLogger("tensile.test").info("hello")
    assert tty.getvalue().startswith("I") and json.loads(pipe.getvalue())["msg"] == "hello"
