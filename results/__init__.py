"""What a trained net is for, in one process: predictions, the paper's Figures 3 and 4, and export.

It reads from model/, data/ and distributed's checkpoint loading; nothing there imports it.
"""
