"""The viewer's stack (dicomnode.archive.stack): spatial order along the image normal, else Instance Number."""
from __future__ import annotations

import json
from pathlib import Path

from dicomnode import ids
from dicomnode.archive import index
from dicomnode.archive import stack


def _series(tmp_path: Path) -> index.Series:
    index.open_index(f"sqlite:///{tmp_path / 'i.db'}")
    patient = index.Patient.create(public_id=ids.patient_id("P"), patient_id="P")
    study = index.Study.create(public_id="st", patient=patient, study_instance_uid="1.2")
    return index.Series.create(public_id="se", study=study, series_instance_uid="1.2.3")


def _add(series: index.Series, n: int, number: int | None, ipp: str | None, frames: int = 1,
         iop: str = "1\\0\\0\\0\\1\\0") -> None:
    tags = {"ImagePositionPatient": ipp, "ImageOrientationPatient": iop} if ipp else {}
    index.Instance.create(public_id=f"i{n}", series=series, sop_instance_uid=f"1.2.3.{n}", instance_number=number,
                          number_of_frames=frames, path=f"files/00/00/{n}.dcm", main_tags=json.dumps(tags))


def test_instances_go_along_the_normal_not_by_number(tmp_path: Path) -> None:
    series = _series(tmp_path)
    try:
        # axial slices whose Instance Numbers run against their positions
        for n, (number, z) in enumerate([(1, 30.0), (2, 10.0), (3, 20.0), (4, 0.0)]):
            _add(series, n, number, f"-100\\-100\\{z}")
        frames, spatial = stack.frames_of(series)
        assert spatial and [f.position for f in frames] == [0.0, 10.0, 20.0, 30.0]
        assert [f.number for f in frames] == [4, 2, 3, 1]
        # a sagittal stack: the normal is x
        sagittal = index.Series.create(public_id="sag", study=series.study, series_instance_uid="1.2.4")
        for n, x in enumerate([5.0, -5.0, 0.0]):
            _add(sagittal, 10 + n, n + 1, f"{x}\\0\\0", iop="0\\1\\0\\0\\0\\-1")
        frames, spatial = stack.frames_of(sagittal)
        assert spatial and [f.number for f in frames] == [1, 3, 2]  # normal (0,1,0) x (0,0,-1) = -x
    finally:
        index.close_index()


def test_without_positions_by_instance_number_and_frames_expanded(tmp_path: Path) -> None:
    series = _series(tmp_path)
    try:
        _add(series, 0, 3, None)
        _add(series, 1, None, None)
        _add(series, 2, 1, "0\\0\\0")  # one position alone does not make an order
        _add(series, 3, 2, None, frames=3)
        frames, spatial = stack.frames_of(series)
        assert not spatial
        assert [(f.instance, f.frame) for f in frames] == [("i2", 1), ("i3", 1), ("i3", 2), ("i3", 3),
                                                            ("i0", 1), ("i1", 1)]
        assert all(f.position is None for f in frames)
    finally:
        index.close_index()


def test_the_viewer_offers_each_window_of_the_file(dolmen_factory, tmp_path: Path) -> None:
    import html
    import io

    import requests

    from dicomnode import demodata

    ds = demodata.make_instance(90, 0, 0, 0, 16, modality="CT")
    ds.WindowCenter, ds.WindowWidth = [40, -600], [400, 1500]
    ds.WindowCenterWidthExplanation = ["SOFT", "LUNG"]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    server = dolmen_factory()
    series = requests.post(server.url + "/instances", data=buffer.getvalue(), timeout=30).json()["ParentSeries"]
    page = server.get(f"/series/{series}/view").text
    stack_json = json.loads(html.unescape(page.split("data-stack='", 1)[1].split("'", 1)[0]))
    assert stack_json["window"] == [40.0, 400.0]  # dragging starts from the file's first window
    assert stack_json["presets"]["file-2"] == [-600.0, 1500.0]
    assert stack_json["labels"]["file-2"] == "LUNG (W 1500 L -600)"
    assert "ct-lung" in stack_json["presets"]  # and the CT presets
    assert '<option value="file-2">LUNG (W 1500 L -600)</option>' in page


def test_cine_plays_at_the_rate_the_file_gives(dolmen_factory) -> None:
    """Cine Rate, else Recommended Display Frame Rate, else 1000 / Frame Time; 10 without them."""
    import html
    import io

    import requests

    from dicomnode import demodata

    server = dolmen_factory()

    def fps_of(n: int, **tags: object) -> int:
        ds = demodata.make_instance(91 + n, 0, 0, 0, 16, modality="US")
        for name, value in tags.items():
            setattr(ds, name, value)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        answer = requests.post(server.url + "/instances", data=buffer.getvalue(), timeout=30)
        page = server.get(f"/series/{answer.json()['ParentSeries']}/view").text
        data = json.loads(html.unescape(page.split("data-stack='", 1)[1].split("'", 1)[0]))
        assert f'value="{data["fps"]}" data-act="fps"' in page  # the rate input starts there too
        return int(data["fps"])

    assert fps_of(0) == 10
    assert fps_of(1, FrameTime=40) == 25
    assert fps_of(2, FrameTime=33.3, RecommendedDisplayFrameRate=15) == 15
    assert fps_of(3, CineRate=30, FrameTime=100) == 30
    assert fps_of(4, CineRate=500) == 60  # within 1 to 60
