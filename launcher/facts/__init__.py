"""Facts that the planner, the report and the ranks share, below all three: the hardware table
(peaks, power, links), the model-FLOPs convention, and the packing rule. Nothing here imports
another launcher room but ``errors``; torch and transformers are never imported.

    hardware.py  accelerators' dense peaks, power and links; the host's assumed figures
    flops.py     model FLOPs per token (the convention MFU and the forecast share)
    packing.py   whether packed documents stay apart for an attention and a micro batch
"""
