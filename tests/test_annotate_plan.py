"""What the annotate mode plans from a bundle's manifest and a folder's listing, before any job runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_random_bundle

from hpa_pipeline.annotate.plan import MemberPlan, StoreSizes, count_shards, member_plans, store_sizes
from hpa_pipeline.bundle import read_manifest
from hpa_pipeline.errors import InputDataError


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("bundles")
    return {
        "cells": read_manifest(write_random_bundle(root / "cells")),
        "images": read_manifest(write_random_bundle(root / "images", "hpa2018-images")),
    }


def test_members_in_bundle_order_with_their_folds_size_and_stores(manifests):
    assert member_plans(manifests["cells"]) == [
        MemberPlan("cam", 2, 64, ("images", "masks")),
        MemberPlan("cell", 2, 64, ("crops",)),
    ]
    assert member_plans(manifests["images"]) == [
        MemberPlan("cam", 2, 64, ("images",)),
        MemberPlan("gap", 2, 64, ("images",)),
    ]


def test_store_sizes_follow_the_members_and_the_segmentation_source(manifests):
    assert store_sizes(manifests["cells"]) == StoreSizes(images=(64,), masks=(64,), crops=(64,))
    assert store_sizes(manifests["images"]) == StoreSizes(images=(64,), masks=(), crops=())
    from_store = {**manifests["cells"], "segment": {**manifests["cells"]["segment"], "source": 128}}
    assert store_sizes(from_store) == StoreSizes(images=(64, 128), masks=(64,), crops=(64,))


def test_shards_are_counted_from_the_listing(tmp_path: Path):
    folder = tmp_path / "new"
    folder.mkdir()
    for image_id in ("a", "b", "c", "d", "e"):
        for channel in ("red", "green", "blue", "yellow"):
            (folder / f"{image_id}_{channel}.png").touch()  # a listing reads no pixel
    assert count_shards(folder, 2) == 3
    assert count_shards(folder, 5) == 1
    (folder / "e_green.png").unlink()
    with pytest.raises(InputDataError, match=f"missing channel file\\(s\\) in {folder}: {folder}/e_green.png$"):
        count_shards(folder, 2)


def test_images_are_also_resized_at_the_runs_larger_multiples_of_a_needed_size(manifests):
    """The run derived each size from the nearest larger multiple it resized to: the same sizes, the same pixels."""
    manifest = manifests["cells"]
    wider = {**manifest, "preprocess": {**manifest["preprocess"], "image_sizes": [64, 96, 128, 256]}}
    assert store_sizes(wider) == StoreSizes(images=(64, 128, 256), masks=(64,), crops=(64,))
