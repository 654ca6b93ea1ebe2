# The trained run as one portable, verifiable artifact (docs/bundle.md): the submission's members' weights as
# safetensors with everything that annotating new images needs. Target `bundle`; not part of `submission`.


rule make_bundle:
    input:
        checkpoints=bundle_checkpoints,
        thresholds=THRESHOLDS_CSV,
        # provenance: the bundle records the sha256 of the training images' index
        index=[index_csv(dataset) for dataset in TRAIN_DATASETS],
    output:
        bundle=directory(BUNDLE_DIR),
        archive=BUNDLE_ZIP,
    params:
        options=bundle_options(),
    log:
        "logs/make_bundle/make_bundle.log",
    benchmark:
        "logs/benchmarks/make_bundle/make_bundle.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline bundle --checkpoints {input.checkpoints} --thresholds {input.thresholds} "
        "--train-index {input.index} {params.options} --out {output.bundle} --zip {output.archive} > {log} 2>&1"
