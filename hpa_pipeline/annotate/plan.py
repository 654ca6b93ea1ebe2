"""What annotating a folder with a bundle builds, known from the bundle's manifest and a listing of the
folder alone (no pixel read, no torch): the workflow's annotate mode plans its jobs from it when it
starts (rules/common.smk), and the engine builds the same stores at the same sizes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpa_pipeline.data.index import index_image_folder
from hpa_pipeline.labels import TASK_IMAGES
from hpa_pipeline.settings import model_stores


@dataclass(frozen=True)
class StoreSizes:
    """The sizes each kind of store is needed at: resized images, resized masks and crops."""

    images: tuple[int, ...]
    masks: tuple[int, ...]
    crops: tuple[int, ...]


@dataclass(frozen=True)
class MemberPlan:
    """One bundle member as the jobs that predict it see it."""

    name: str
    n_folds: int
    image_size: int
    #: the stores it reads besides the cell tables (``images``, ``masks``, ``crops``)
    stores: tuple[str, ...]


def member_plans(manifest: Mapping[str, Any]) -> list[MemberPlan]:
    """Every member of a bundle's manifest (:func:`hpa_pipeline.bundle.read_manifest`), in its order."""
    plans = []
    for member in manifest["members"]:
        settings = member["settings"]
        stores = tuple(model_stores(settings["kind"], manifest["task"]))
        plans.append(MemberPlan(member["name"], len(member["weights"]), int(settings["image_size"]), stores))
    return plans


def store_sizes(manifest: Mapping[str, Any]) -> StoreSizes:
    """The sizes the members read each kind of store at; the images also at the segmentation's source size,
    and at every larger size of the run that is a multiple of a needed one.

    The run resized to all of ``preprocess.image_sizes`` at once, each size derived from the nearest larger
    multiple among them (:class:`~hpa_pipeline.preprocess.resize.ImageResizer`): resizing at those sizes
    too gives the run's pixels, where resizing from the original would differ by rounding.
    """
    needs: dict[str, set[int]] = {"images": set(), "masks": set(), "crops": set()}
    for member in member_plans(manifest):
        for store in member.stores:
            needs[store].add(member.image_size)
    images = needs["images"] | needs["crops"]
    if manifest["task"] != TASK_IMAGES and manifest["segment"]["source"] != "original":
        images.add(int(manifest["segment"]["source"]))
    run_sizes = [int(size) for size in manifest["preprocess"]["image_sizes"]]
    images |= {larger for size in images for larger in run_sizes if larger > size and larger % size == 0}
    return StoreSizes(
        tuple(sorted(images)), tuple(sorted(needs["masks"] | needs["crops"])), tuple(sorted(needs["crops"]))
    )


def count_shards(input_dir: str | Path, images_per_shard: int) -> int:
    """How many shards of ``images_per_shard`` images the folder's images make, from a listing of the folder.

    Raises:
        InputDataError: the folder is missing or empty, or an image lacks a channel file (every missing file
            is named), as :func:`hpa_pipeline.data.index.index_image_folder` says.
    """
    return int(index_image_folder(input_dir, images_per_shard)["shard"].max()) + 1
