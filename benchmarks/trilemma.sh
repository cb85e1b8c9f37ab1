#!/usr/bin/env bash
# The generative learning trilemma on digits: the default recipe trained for 10 minutes, then sampled with
# every method of `difflab report`'s default list (quality: FD; diversity: recall, coverage; speed: NFE, time).
set -euo pipefail
RUN=${RUN:-runs/trilemma-digits}
[ -f "$RUN/checkpoint.safetensors" ] || difflab train --data digits --out "$RUN" --minutes 10 --threads 1
difflab report --run "$RUN" --num 1000 --threads 1 --out docs/benchmarks/trilemma_digits
