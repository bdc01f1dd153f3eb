"""Test helper (under torchrun, 2 ranks): rank 1 hangs, rank 0 waits at a barrier and must fail in one line."""

import sys
import time

from flowlm.cli import run_guarded
from flowlm.train.parallel import barrier, init_world


def main() -> int:
    world = init_world()
    if world.rank == 1:
        time.sleep(float(sys.argv[1]))  # longer than FLOWLM_DIST_TIMEOUT: the barrier below never completes in time
        return 0
    barrier(world, "the end of stage 'x'")
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main))
