"""Reinforcement learning: the empathy reward (Eq. 2-5), PPO (Eq. 6-15) and its training loop, the study's
arms, best-of-n and rejection sampling. Imports the foundation, emprl.models and emprl.eval."""
