# Input data: the synthetic demo dataset (when configured) and the per-dataset image index.

if config.get("demo_data"):

    rule make_demo_data:
        output:
            train=directory(f"{INPUT_DIR}/train"),
            test=directory(f"{INPUT_DIR}/test"),
            truth=directory(f"{INPUT_DIR}/truth"),
            train_table=f"{INPUT_DIR}/train.csv",
            test_table=f"{INPUT_DIR}/sample_submission.csv",
        params:
            out=lambda wildcards, output: os.path.dirname(output.train_table),
            n_train=config["demo_data"]["n_train"],
            n_test=config["demo_data"]["n_test"],
            image_size=config["demo_data"]["image_size"],
            cells_per_image=" ".join(str(n) for n in config["demo_data"]["cells_per_image"]),
            empty_test_images=config["demo_data"]["empty_test_images"],
            seed=config["seed"],
            task=TASK,
        log:
            "logs/make_demo_data/make_demo_data.log",
        benchmark:
            "logs/benchmarks/make_demo_data/make_demo_data.tsv"
        conda:
            "../envs/pipeline.yaml"
        shell:
            "hpa-pipeline demo-data --out {params.out} --overwrite --n-train {params.n_train} "
            "--n-test {params.n_test} --image-size {params.image_size} "
            "--cells-per-image {params.cells_per_image} --empty-test-images {params.empty_test_images} "
            "--seed {params.seed} --task {params.task} > {log} 2>&1"


rule index_images:
    input:
        images=lambda wildcards: image_dir(wildcards.dataset),
        table=lambda wildcards: label_table(wildcards.dataset),
    output:
        index_csv("{dataset}"),
    params:
        shards=lambda wildcards: config["shards"][wildcards.dataset],
        task=TASK,
    log:
        "logs/index_images/{dataset}.log",
    benchmark:
        "logs/benchmarks/index_images/{dataset}.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline index --images {input.images} --table {input.table} --kind {wildcards.dataset} "
        "--shards {params.shards} --task {params.task} --out {output} > {log} 2>&1"
