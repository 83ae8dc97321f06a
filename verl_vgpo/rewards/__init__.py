"""Reward functions usable as verl's ``reward.custom_reward_function`` (path ``pkg://verl_vgpo.rewards.<module>``)."""
