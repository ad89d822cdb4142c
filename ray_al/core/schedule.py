"""Learning-rate multipliers by step, shared by the AL blocks and the BP twin."""


def paper_multiplier(step: int, total_steps: int) -> float:
    """x0.1 at 40%, 60%, 80% of the steps, then x0.5 at 90% (the paper's schedule)."""
    frac = step / max(total_steps, 1)
    m = 1.0
    for milestone in (0.4, 0.6, 0.8):
        if frac >= milestone:
            m *= 0.1
    if frac >= 0.9:
        m *= 0.5
    return m


def lr_multiplier(kind: str, step: int, total_steps: int) -> float:
    if kind == "constant":
        return 1.0
    if kind == "paper":
        return paper_multiplier(step, total_steps)
    raise ValueError(f"unknown schedule '{kind}'")
