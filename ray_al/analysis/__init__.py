"""Reading results: the report (`report.py`, the paper's tables and figures), the paper's stored
figures (`paper.py`), the metafeatures (`features.py`: hidden features, class distances, t-SNE),
gradient norms by depth and the throughput benchmark behind `ray-al bench`.

The top layer beside the CLI: it may import anything below; nothing imports it but cli.py.
"""
