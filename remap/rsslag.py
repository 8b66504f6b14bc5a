"""Why a process's VmRSS reads below its page tables: the split RSS counters of 2.6.34-6.1.

On those kernels (SPLIT_RSS_COUNTING, mm/memory.c) a fault by a thread of the mm adds its page
to that *thread's* cache (``task->rss_stat``, add_mm_counter_fast), not to the mm's counters
that status/statm print.  The cache is folded in (sync_mm_rss) only

- at a fault entry once the thread's event count passed TASK_RSS_EVENTS_THRESH (64): checked
  in handle_mm_fault before the fault, so the first fold is at the 66th fault;
- before a zap by a task of the mm itself (add_mm_rss_vec syncs when current->mm == mm:
  munmap, madvise(MADV_DONTNEED), exit) -- which is why ``remap squeeze``, whose madvise runs
  in the target's own thread, leaves status exact;
- at exec (for the old mm) and at exit.

Everything else writes the mm's counters directly: faults made by *another* task (exec's
argument pages, written by the exec'ing task while its old mm is current; a debugger's
access), fork's copy of the parent's page tables (copy_pte_range counts into the child's mm),
and reclaim (try_to_unmap: kswapd, MADV_PAGEOUT) -- which can drive a counter below zero
while the faults that added those pages still sit in a cache; get_mm_counter then reads 0
("counter is updated in asynchronous manner and may go to minus").  A fault-around fault
(3.15+) is one event but maps up to 16 pages, so a small program maps 60 pages in far fewer
than 65 faults and, if it never unmaps anything, status shows only what was added directly
-- typically exec's one argument page, ``RSS 4 kB`` -- for as long as it runs.  From 6.2 the
counters are per-CPU (percpu_counter) and this mechanism is gone
(remap.residency.mechanism_for names each kernel's).

Measured (experiments/energymech-seed-screen.toml, Debian 6.1 guest): EnergyMech in the
foreground, connected, after !meminfo and 1,000 PINGs, answers ``RSS 4 kB`` while the page walk
reads 240-248 kB (static) and 748-860 kB (dynamic), 20/20: RssAnon 4 kB, RssFile 0; right after
a squeeze status equals the page walk.  Daemonized (no MECHRESET: fork, the parent exits) it
prints ``RSS 44 kB``: fork counted the copied anonymous pages (32 kB, exact) and 3 file pages
into the child's mm, and the child's own 12 faults never folded.  The 4 kB reading is the
bot's state after an exec without a fork -- EnergyMech's own reset re-executes it with
MECHRESET set (src/main.c) -- and lasts while it makes fewer than 65 faults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from . import procfs
from .errors import NoSuchProcess

FOLD_EVERY = 65  # events > TASK_RSS_EVENTS_THRESH (64) before the fold: the 66th entry folds


@dataclass
class RssLag:
    """Status's per-class RSS counters beside the page walk's, and the threads' fault counts.

    ``counted_kb``/``walked_kb``: {anon, file, shmem} from status (RssAnon, RssFile,
    RssShmem) and from the page tables.  ``faults``: {tid: minflt + majflt} over each thread's
    life (since the thread was created: faults before an exec are included, so it is an upper
    bound on the faults since exec).  ``split``: the kernel keeps per-thread caches."""

    split: bool
    counted_kb: dict[str, int]
    walked_kb: dict[str, int]
    faults: dict[int, int]

    @property
    def lag_kb(self) -> int:
        return sum(self.walked_kb.values()) - sum(self.counted_kb.values())

    def to_json(self) -> dict:
        out = asdict(self)
        out["faults"] = {str(t): n for t, n in self.faults.items()}  # JSON keys are strings
        out["lag_kb"] = self.lag_kb
        return out

    def sentence(self) -> str:
        """One line for ``remap explain``: how much is unfolded and why, for this process."""
        c, w = self.counted_kb, self.walked_kb
        per = ", ".join(f"{k} {c.get(k, 0)} of {w.get(k, 0)} kB" for k in ("anon", "file", "shmem"))
        if not self.split:
            return f"status counts {per} (page walk second); no per-thread RSS caches here"
        if self.lag_kb <= 0:
            return f"split RSS counters agree with the page walk ({per})"
        most = max(self.faults.values(), default=0)
        return (
            f"status counts {per}: {self.lag_kb} kB sit in per-thread RSS caches, folded in only "
            f"at a thread's {FOLD_EVERY + 1}th fault since its last fold, before its own "
            "munmap/madvise, at exec or exit; what status shows was added directly (exec's "
            "argument pages, fork's copy, other tasks' faults) -- busiest thread "
            f"{most} faults in its life (those before exec included)"
        )


def fault_counts(pid: int) -> dict[int, int]:
    """{tid: minflt + majflt} of every thread of PID (threads that exit meanwhile left out)."""
    out: dict[int, int] = {}
    for tid in procfs.thread_ids(pid):
        try:
            st = procfs.read_stat(pid, tid)
        except NoSuchProcess:  # the thread exited between the listing and its stat
            continue
        out[tid] = st.minflt + st.majflt
    return out


def rss_lag(pid: int, split: bool, counted_kb: dict[str, int], walked_kb: dict[str, int]) -> RssLag:
    """The RssLag of PID from counters already read (remap.residency passes its snapshot's)."""
    return RssLag(split, dict(counted_kb), dict(walked_kb), fault_counts(pid))
