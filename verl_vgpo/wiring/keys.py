"""Names shared by the engine (worker side) and the trainer layer; one place so they cannot drift."""

from verl_vgpo.advantage import METRIC_PREFIX  # noqa: F401  (the metric prefix belongs to the estimator)

# extra_info flag the trainer sets on the old-log-prob batch to ask the engine for focus scores
CAPTURE_FOCUS_FLAG = "vgpo_capture_focus"

# output field of the engine (beside log_probs): raw cosine rho of each RESPONSE token at its own
# position (one row of response length per sequence), NaN for sequences without visual tokens
FOCUS_OUTPUT_KEY = "vgpo_focus"

# output field of the engine beside FOCUS_OUTPUT_KEY: one float32 per sequence, the seconds of focus
# capture apportioned to that sequence (a micro-batch's time split over its rows in proportion to their
# token counts), so the sum over a batch's rows is the capture time summed over micro-batches and ranks
FOCUS_SECONDS_KEY = "vgpo_focus_seconds"

# engine metric (per micro-batch) with the same time, for engine-level diagnostics and benchmarks; the
# trainer layer reads FOCUS_SECONDS_KEY instead (verl discards the old-log-prob pass's metrics)
FOCUS_TIME_KEY = "vgpo_focus_micro_batch_seconds"


# extra_info entry the trainer sets beside CAPTURE_FOCUS_FLAG: the visual token kinds (a list drawn from
# config.VISUAL_TOKEN_KINDS, e.g. ["image", "video"]) whose hidden states form the visual prototype;
# the worker side cannot see algorithm.vgpo, so the trainer hands the validated choice over
FOCUS_VISUAL_TOKENS_KEY = "vgpo_visual_tokens"
