# Input data: the synthetic demo dataset (when configured) and the per-dataset image index.

if config.get("demo_data"):

    rule make_demo_data:
        output:
            train=directory(f"{INPUT_DIR}/train"),
            test=directory(f"{INPUT_DIR}/test"),
            truth=directory(f"{INPUT_DIR}/truth"),
            train_table=f"{INPUT_DIR}/train.csv",
            test_table=f"{INPUT_DIR}/sample_submission.csv",
            # the public-HPA mirror's table (its server folder is a sibling, read by rule download_extra_set)
            **({"public_table": f"{INPUT_DIR}/public_hpa/kaggle_2021.tsv"} if config["demo_data"].get("n_public") else {}),
        params:
            out=lambda wildcards, output: os.path.dirname(output.train_table),
            n_train=config["demo_data"]["n_train"],
            n_test=config["demo_data"]["n_test"],
            image_size=config["demo_data"]["image_size"],
            cells_per_image=" ".join(str(n) for n in config["demo_data"]["cells_per_image"]),
            empty_test_images=config["demo_data"]["empty_test_images"],
            n_public=config["demo_data"].get("n_public", 0),
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
            "--n-public {params.n_public} "
            "--seed {params.seed} --task {params.task} > {log} 2>&1"


rule download_extra_set:
    input:
        # a local TSV is an input (a change reruns the download); a URL is read by the job
        tsv=lambda wildcards: download_tsv_input(wildcards.dataset),
    output:
        table=download_table("{dataset}"),
        failed=download_failures("{dataset}"),
    params:
        options=lambda wildcards: download_options(wildcards.dataset),
        images=lambda wildcards: image_dir(wildcards.dataset),
    threads: 1
    log:
        "logs/download_extra_set/{dataset}.log",
    benchmark:
        "logs/benchmarks/download_extra_set/{dataset}.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline download-public {params.options} --dataset {wildcards.dataset} --out-images {params.images} "
        "--out-table {output.table} --out-failed {output.failed} > {log} 2>&1"


rule index_images:
    input:
        images=image_dir_input,
        table=lambda wildcards: label_table(wildcards.dataset),
        # IDs name files, fold rows and submission rows: an extra set must not reuse one
        others=lambda wildcards: [index_csv(other) for other in datasets_before(wildcards.dataset)],
    output:
        index_csv("{dataset}"),
    params:
        images=lambda wildcards: image_dir(wildcards.dataset),
        kind=lambda wildcards: index_kind(wildcards.dataset),
        shards=lambda wildcards: n_shards(wildcards.dataset),
        task=TASK,
    log:
        "logs/index_images/{dataset}.log",
    benchmark:
        "logs/benchmarks/index_images/{dataset}.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline index --images {params.images} --table {input.table} --kind {params.kind} "
        "--dataset {wildcards.dataset} --disjoint-from {input.others} --shards {params.shards} --task {params.task} "
        "--out {output} > {log} 2>&1"


rule hash_images:
    input:
        lambda wildcards: images_store(wildcards.dataset, min(IMAGE_SIZES), wildcards.shard),
    output:
        hashes_csv("{dataset}", "{shard}"),
    log:
        "logs/hash_images/{dataset}-{shard}.log",
    benchmark:
        "logs/benchmarks/hash_images/{dataset}-{shard}.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline hash-images --images {input} --out {output} > {log} 2>&1"


rule duplicate_groups:
    input:
        all_shards(hashes_csv, DATASETS),
    output:
        report(DUPLICATE_GROUPS, caption="../report/duplicates.rst", category="Duplicates"),
    params:
        hashes=hash_options,
        max_distance=DUPLICATES.get("max_distance", 0),
    log:
        "logs/duplicate_groups/duplicate_groups.log",
    benchmark:
        "logs/benchmarks/duplicate_groups/duplicate_groups.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline duplicate-groups --hashes {params.hashes} --max-distance {params.max_distance} "
        "--out {output} > {log} 2>&1"
