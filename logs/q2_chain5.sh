#!/bin/bash
# Session 2026-11-28 (4th): lm arm at rho=10 seeds 0,1; kd seed 2 (natural + samplers); emotion seed 2; lm seed 2.
cd /work/exp
run() { PYTHONPATH=/work/exp/src /work/main/.venv/bin/python experiment.py logger=none paths.root_dir=/work/main 'overrides=["logger=none"]' "$@"; }
run experiment=q2_imbalance 'experiment.arms=[lm_short]' 'experiment.ratios=[10]' 'experiment.samplers=[]' 'experiment.seeds=[0,1]'
run experiment=q2_imbalance 'experiment.arms=[kd_short]' 'experiment.seeds=[0,1,2]'
run experiment=q2_emotion
run experiment=q2_imbalance
