import json
import logging

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
