#!/usr/bin/env bash
# Run on the lent GPU machine from the repository root (see README, "GPU work"):
# installs mamba-ssm's Triton part (../shared/device copied into .gpu/device) and any carried
# wheels (.whl/*.whl, e.g. SimpleITK) into /tmp/site, once per machine.
#   source benchmarks/gpu/setup.sh
set -e
site=/tmp/site
if [ ! -e "$site/.mamba_ok" ] && [ -d .gpu/device/wheels ]; then
  bash .gpu/device/setup-mamba-ssm.sh .gpu/device/wheels "$site" && touch "$site/.mamba_ok"
fi
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
fi
export PYTHONPATH="$site:$PWD/MambaDosePrediction:$PWD/MambaDoseTraining:${PYTHONPATH:-}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
set +e
