"""Recipe data builders: SPECS preference pairs and the toy task, CLS-RL few-shot sets, ViRC
next-turn cuts for strategic RL. Each writes mmpost records that a trainer then reads."""
