# Disaggregated-inference experiment pipeline.
# Targets: results/<phase>/<layer>.done, results/<phase>/runs/<pattern>.json.
# `snakemake -n <target>` plans; reruns are decided by content (see docs/ARCHITECTURE.md).
from snakemake.utils import min_version

min_version("9.20")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/render.smk"
include: "rules/deploy.smk"
include: "rules/run.smk"
include: "rules/report.smk"
include: "rules/estimate.smk"
