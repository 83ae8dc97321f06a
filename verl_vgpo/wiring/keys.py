"""Names shared by the engine (worker side) and the trainer layer; one place so they cannot drift."""

from verl_vgpo.advantage import METRIC_PREFIX  # noqa: F401  (the metric prefix belongs to the estimator)

# extra_info flag the trainer sets on the old-log-prob batch to ask the engine for focus scores
CAPTURE_FOCUS_FLAG = "vgpo_capture_focus"

# output field of the engine (beside log_probs): per-position raw cosine rho at each token's OWN
# position over the full sequence (prompt + response), NaN for sequences without visual tokens
FOCUS_OUTPUT_KEY = "vgpo_focus"

# seconds the engine spent on focus capture for this batch (summed over micro-batches)
FOCUS_TIME_KEY = "vgpo_focus_seconds"


# extra_info entry the trainer sets beside CAPTURE_FOCUS_FLAG: the visual token kinds (a list drawn from
# config.VISUAL_TOKEN_KINDS, e.g. ["image", "video"]) whose hidden states form the visual prototype;
# the worker side cannot see algorithm.vgpo, so the trainer hands the validated choice over
FOCUS_VISUAL_TOKENS_KEY = "vgpo_visual_tokens"
