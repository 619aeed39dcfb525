# msgfm: raw satellite archives -> GeoPile-2 shards -> pretraining -> finetuning -> paper tables.
# Logic lives in the msgfm package; the rules only wire files to its command-line verbs.
from snakemake.utils import min_version, validate

from msgfm.config_checks import check_config
from msgfm.schema_errors import schema_errors_in_one_line

min_version("9.0")


configfile: "config/config.yaml"


with schema_errors_in_one_line():
    validate(config, "workflow/schemas/config.schema.yaml")
check_config(config)


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/pretrain.smk"
include: "rules/finetune.smk"
include: "rules/tables.smk"
include: "rules/figures.smk"


# One MLflow parent run per invocation (store and experiments created first, before jobs fan
# out); its jobs' runs carry its id. Functions in rules/common.smk, logic in msgfm.tracking.
onstart:
    start_workflow_run()


onsuccess:
    finish_workflow_run("FINISHED", log)


onerror:
    finish_workflow_run("FAILED", log)


rule all:
    default_target: True
    input:
        all_targets(),
