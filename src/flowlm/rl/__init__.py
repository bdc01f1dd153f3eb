"""flowlm.rl: the RLVR maths as small pure tensor functions.

- `advantages`: group-relative advantages (GRPO, Dr GRPO / OLMo 3 "centered", RLOO) by name, zero-std
  group detection, the DAPO soft overlong penalty and truncated-completion masking;
- `losses`: the policy-gradient loss (PPO-clip with clip-higher, GSPO, CISPO), its normalisations
  (token, sequence, constant), KL estimators k1/k2/k3 and per-token entropy;
- `mismatch`: training-inference mismatch weights (TIS truncation or IcePop-style masking, per token or
  per sequence) that `losses.policy_loss` takes as `is_weights`.
"""
