"""Glance-and-Focus networks (GFNet; Wang et al., NeurIPS 2020 / TPAMI 2023; blackfeather-wang/GFNet-Pytorch)
and their backbones, in Paddle. Work in progress: not registered yet (see ``ppcdnv2/families/__init__.py``)."""
