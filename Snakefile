# hpa-pipeline: HPA immunofluorescence images -> per-cell protein localisation predictions.
# This file only wires: configuration, validation, rule modules and targets (see docs/architecture.md).
from snakemake.utils import min_version, validate

min_version("9.0")


# A --configfile on the command line replaces this file instead of being merged into it, so that the
# demo's models and stages never mix with the full configuration's.
if not workflow.overwrite_configfiles:

    configfile: "workflow_config.yaml"


# Two modes: training (the default) and annotate, a config with `annotate` (configs/annotate.yaml): a
# trained bundle applied to a folder of new images, on the same preprocessing rules.
if "annotate" in config:
    validate(config, "schemas/annotate.schema.yaml")
else:
    validate(config, "schemas/config.schema.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"


if ANNOTATE_MODE:

    include: "rules/preprocess.smk"
    include: "rules/annotate.smk"

    rule annotations:
        input:
            annotate_out_dir(),
        default_target: True

else:

    include: "rules/data.smk"
    include: "rules/preprocess.smk"
    include: "rules/train.smk"
    include: "rules/predict.smk"
    include: "rules/ensemble.smk"
    include: "rules/submit.smk"
    include: "rules/report.smk"
    include: "rules/bundle.smk"

    rule preprocess:
        input:
            preprocess_outputs(),

    rule models:
        input:
            model_outputs(),

    rule submission:
        input:
            submission_outputs(),
        default_target: True

    # What each ensemble and each submission member alone would submit (with truth, evaluate scores them).
    rule stage_submissions:
        input:
            lambda wildcards: stage_submission_outputs(),

    # Not part of submission: the trained run as one portable bundle for annotating new images (docs/bundle.md).
    rule bundle:
        input:
            BUNDLE_DIR,
            BUNDLE_ZIP,
