# Preprocessing, one job per dataset and shard: resize -> segment -> resize_masks (+ cell table) -> crop_cells.
# The annotate mode runs the same rules on its dataset `annotate` (sizes and segmentation from the bundle).


rule resize_image:
    input:
        index=lambda wildcards: index_csv(wildcards.dataset),
        images=image_dir_input,
    output:
        directory([images_store("{dataset}", size, "{shard}") for size in IMAGE_SIZES]),
    params:
        images=lambda wildcards: image_dir(wildcards.dataset),
        sizes=" ".join(str(size) for size in IMAGE_SIZES),
    threads: 2
    log:
        "logs/resize_image/{dataset}-{shard}.log",
    benchmark:
        "logs/benchmarks/resize_image/{dataset}-{shard}.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline resize --index {input.index} --images {params.images} --shard {wildcards.shard} "
        "--sizes {params.sizes} --out {output} --threads {threads} > {log} 2>&1"


rule segment:
    input:
        index=lambda wildcards: index_csv(wildcards.dataset),
        source=segment_source_input,
    output:
        directory(masks_store("{dataset}", "{shard}")),
    params:
        source_option=segment_source_option,
        scale_factor=lambda wildcards: segment_settings(wildcards.dataset)["scale_factor"],
        backend=SEGMENT_BACKEND,
        weights=hpacellseg_options(),
    threads: 1
    resources:
        gpu=SEGMENT_GPU,
    log:
        "logs/segment/{dataset}-{shard}.log",
    benchmark:
        "logs/benchmarks/segment/{dataset}-{shard}.tsv"
    conda:
        SEGMENT_ENV
    shell:
        "hpa-pipeline segment --index {input.index} --shard {wildcards.shard} "
        "{params.source_option} --scale-factor {params.scale_factor} "
        "--backend {params.backend} {params.weights} "
        "--threads {threads} --out {output} > {log} 2>&1"


rule resize_masks:
    input:
        masks=lambda wildcards: masks_store(wildcards.dataset, wildcards.shard),
    output:
        masks=directory([resized_masks_store("{dataset}", size, "{shard}") for size in MASK_SIZES]),
        cells=directory(cells_store("{dataset}", "{shard}")),
    params:
        sizes=" ".join(str(size) for size in MASK_SIZES),
    log:
        "logs/resize_masks/{dataset}-{shard}.log",
    benchmark:
        "logs/benchmarks/resize_masks/{dataset}-{shard}.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline resize-masks --masks {input.masks} --sizes {params.sizes} "
        "--out-masks {output.masks} --out-cells {output.cells} --dataset {wildcards.dataset} > {log} 2>&1"


rule crop_cells:
    input:
        images=lambda wildcards: images_store(wildcards.dataset, wildcards.size, wildcards.shard),
        masks=lambda wildcards: resized_masks_store(wildcards.dataset, wildcards.size, wildcards.shard),
        cells=lambda wildcards: cells_store(wildcards.dataset, wildcards.shard),
    output:
        directory(crops_store("{dataset}", "{size}", "{shard}")),
    params:
        crop_size=CROP_SIZE,
    log:
        "logs/crop_cells/{dataset}-{size}-{shard}.log",
    benchmark:
        "logs/benchmarks/crop_cells/{dataset}-{size}-{shard}.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline crop --images {input.images} --masks {input.masks} --cells {input.cells} "
        "--crop-size {params.crop_size} --out {output} > {log} 2>&1"
