# The annotate mode: a trained bundle applied to a folder of new images, sharded (docs/annotations.md).
# index_folder -> (rules/preprocess.smk: resize_image, segment, resize_masks, crop_cells on dataset
# `annotate`) -> predict_shard per member x fold x shard -> annotate_shard per shard -> merge_annotations.
# It never trains; hpa-pipeline annotate runs the same steps in one process.


rule index_folder:
    input:
        ANNOTATE_INPUT_DIR,
    output:
        index=index_csv(ANNOTATE_DATASET),
        shards=[annotate_shard_index(shard) for shard in shards(ANNOTATE_DATASET)],
    params:
        images_per_shard=ANNOTATE_SETTINGS["images_per_shard"],
        dataset=ANNOTATE_DATASET,
    log:
        "logs/index_folder/index_folder.log",
    benchmark:
        "logs/benchmarks/index_folder/index_folder.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline index-folder --images {input} --images-per-shard {params.images_per_shard} "
        "--dataset {params.dataset} --out {output.index} --out-shards {output.shards} > {log} 2>&1"


rule prepare_bundle:
    input:
        ANNOTATE_SETTINGS["bundle"],
    output:
        directory(ANNOTATE_BUNDLE_DIR),
    log:
        "logs/prepare_bundle/prepare_bundle.log",
    benchmark:
        "logs/benchmarks/prepare_bundle/prepare_bundle.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline prepare-bundle --bundle {input} --out {output} > {log} 2>&1"


rule predict_shard:
    input:
        unpack(annotate_predict_inputs),
    output:
        directory(annotate_predictions("{member}", "{fold}", "{shard}")),
    params:
        data=data_options,
    threads: MODEL_THREADS
    resources:
        gpu=1,
    log:
        "logs/predict_shard/{member}-fold{fold}-{shard}.log",
    benchmark:
        "logs/benchmarks/predict_shard/{member}-fold{fold}-{shard}.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline annotate-predict --bundle {input.bundle} --member {wildcards.member} --fold {wildcards.fold} "
        "{params.data} --threads {threads} --out {output} > {log} 2>&1"


rule annotate_shard:
    input:
        unpack(annotate_shard_inputs),
    output:
        directory(annotate_shard_dir("{shard}")),
    params:
        images=ANNOTATE_INPUT_DIR,
        cells=annotate_cell_options,
        images_per_shard=ANNOTATE_SETTINGS["images_per_shard"],
    log:
        "logs/annotate_shard/{shard}.log",
    benchmark:
        "logs/benchmarks/annotate_shard/{shard}.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline annotate-shard --bundle {input.bundle} --input-dir {params.images} --index {input.index} "
        "--predictions {input.predictions} {params.cells} --images-per-shard {params.images_per_shard} "
        "--out {output} > {log} 2>&1"


rule merge_annotations:
    input:
        bundle=ANNOTATE_BUNDLE_DIR,
        index=index_csv(ANNOTATE_DATASET),
        shards=[annotate_shard_dir(shard) for shard in shards(ANNOTATE_DATASET)],
    output:
        directory(annotate_out_dir()),
    params:
        images=ANNOTATE_INPUT_DIR,
        images_per_shard=ANNOTATE_SETTINGS["images_per_shard"],
    log:
        "logs/merge_annotations/merge_annotations.log",
    benchmark:
        "logs/benchmarks/merge_annotations/merge_annotations.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline annotate-merge --bundle {input.bundle} --input-dir {params.images} --index {input.index} "
        "--shards {input.shards} --images-per-shard {params.images_per_shard} --out {output} > {log} 2>&1"
