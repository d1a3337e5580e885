"""kiapi_core.testing.HandlerHarness on the echo test plugin: the real job context, recorded."""

from __future__ import annotations

import threading

import pytest

import kiapi_echo
from kiapi_core.errors import InvalidInput, InvalidRequest, JobCanceled
from kiapi_core.jobs.models import JobStatus
from kiapi_core.testing import HandlerHarness, build_test_host, file_ref


@pytest.fixture
def harness(tmp_path) -> HandlerHarness:
    return HandlerHarness(build_test_host(tmp_path, plugins=[kiapi_echo]))


def test_render_stores_a_real_artifact_and_records_progress(harness):
    run = harness.run("render", {"text": "hi", "repeat": 2, "extra": 1})
    assert run.succeeded and run.error is None and run.status is JobStatus.succeeded
    assert run.events == [(0.5, "rendering")] and run.labels == ["rendering"]
    (artifact,) = run.artifacts
    assert harness.host.files.get(artifact.file_id).path == artifact.path  # in the host's Files store
    assert run.read() == b"hihi" and run.read(artifact.file_id) == b"hihi"
    assert artifact.record.meta["job_type"] == "echo" and artifact.record.meta["model"] == "small"
    assert run.result == {"file_id": artifact.file_id, "text": "hihi"}  # builtins, as the job holds it
    assert run.returned.text == "hihi"  # the handler's own Struct
    assert run.params == {"text": "hihi", "model": "small"} and run.prepared.warnings == [
        "ignored unknown field: extra"]
    assert (run.job.progress, run.job.progress_label) == (1.0, "done")
    assert {"peak_gb", "estimate_gb"} <= set(run.metrics)  # the core measured the job
    assert not (harness.host.settings.data_path / "work" / run.job.id).exists()  # scratch dir removed
    assert run.raise_for_status() is run


def test_file_inputs_are_resolved_like_the_request_path(harness):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    image = harness.store(buffer.getvalue(), "in.png", "image/png")
    run = harness.run("render", {"text": "x", "image": file_ref(image)})
    assert run.inputs["image"].file_id == image.file_id and run.job.inputs == {"image": image.file_id}
    with Image.open(io.BytesIO(run.read())) as echoed:  # the input's pixels plus the job's params
        assert echoed.tobytes() == Image.open(buffer).tobytes() and "kiapi" in echoed.text
    assert run.artifacts[0].content_type == "image/png"
    not_image = harness.store(b"plain text", "x.txt", "text/plain")
    with pytest.raises(InvalidInput, match="not a readable image"):  # rejected before any handler runs, as POST would
        harness.prepare("render", {"text": "x", "image": file_ref(not_image)})


def test_prepare_rejects_like_post_and_params_can_be_edited(harness):
    with pytest.raises(InvalidRequest, match="forbidden"):
        harness.run("render", {"text": "forbidden"})
    with pytest.raises(InvalidRequest, match="text"):
        harness.prepare("render", {"repeat": 1})
    prepared = harness.prepare("render", kiapi_echo.RenderRequest(text="a", model="echo-large"))
    assert prepared.model.name == "large"
    prepared.params["text"] = "edited"
    assert harness.run(prepared).result["text"] == "edited"


def test_cancel_on_label_fraction_or_predicate(harness):
    """The cancel is requested right after the matching report: the handler's next report raises."""
    run = harness.run("slow", {"steps": 5}, cancel_on="working")
    assert run.canceled and isinstance(run.error, JobCanceled) and run.events == [(0.0, "working"), (0.2, "working")]
    assert run.job.progress == 0.0 and run.result is None and run.artifacts == []  # 0.2 was never published
    with pytest.raises(JobCanceled):
        run.raise_for_status()
    at = harness.run("slow", {"steps": 5}, cancel_at=0.4)
    assert at.canceled and [f for f, _ in at.events] == [0.0, 0.2, 0.4, 0.6]
    pred = harness.run("slow", {"steps": 5}, cancel_on=lambda fraction, label: fraction == 0.6)
    assert pred.canceled and len(pred.events) == 5
    late = harness.run("slow", {"steps": 5}, cancel_on=lambda fraction, label: fraction == 0.8)
    assert late.succeeded  # asked after the last check: the job still ends as it ended
    done = harness.run("slow", {"steps": 5})
    assert done.succeeded and done.result == {"steps": 5} and len(done.events) == 5


def test_cancel_while_waiting_is_seen_by_check_canceled(harness):
    kiapi_echo.GATES["harness"] = gate = threading.Event()
    try:
        run = harness.run("slow", {"steps": 3, "gate": "harness"}, cancel_on="working")
        assert run.canceled and run.events == [(0.0, "working")] and not gate.is_set()
    finally:
        kiapi_echo.GATES.pop("harness")


def test_failures_keep_the_original_exception(harness):
    crash = harness.run("fail", {"how": "crash"})
    assert crash.failed and isinstance(crash.error, RuntimeError) and str(crash.error) == "boom"
    assert crash.job.error == "RuntimeError: boom" and crash.job.error_code == "internal_error"
    with pytest.raises(RuntimeError, match="boom"):
        crash.raise_for_status()
    invalid = harness.run("fail", {"how": "invalid"})
    assert invalid.failed and isinstance(invalid.error, InvalidRequest)
    assert invalid.job.error_code == invalid.error.code and invalid.artifacts == []


def test_several_artifacts_in_order(harness):
    run = harness.run("pair", {})
    assert [a.filename for a in run.artifacts] == ["one.txt", "two.txt"]
    assert [run.read(0), run.read(1)] == [b"one", b"two"]
    assert run.result == {"files": [a.file_id for a in run.artifacts]}


def test_plugin_settings_feed_the_config_table(tmp_path):
    from kiapi_ernie.settings import ErnieSettings

    host = build_test_host(tmp_path, plugins=["kiapi_ernie"], demo=False,
                           plugin_settings={"ernie": {"max_steps": 10}})
    settings = host.plugin_settings("ernie")
    assert isinstance(settings, ErnieSettings) and settings.max_steps == 10 and not host.settings.demo
    with pytest.raises(ValueError, match="name the capability"):
        HandlerHarness(build_test_host(tmp_path / "two", plugins=[kiapi_echo, "kiapi_ernie"]))
