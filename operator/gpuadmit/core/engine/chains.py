"""Step 2b of a cycle, the ejection-chain search: local search on the best placement passes,
moving single-replica admissions of this cycle to make room for queued work that earns more."""

from __future__ import annotations

from collections.abc import Sequence

from ..model import PlacementEntry
from .cycle import EPSILON, Admission, Candidate, Cycle, Option, PassResult
from .passes import place_option

# The ejection-chain improvement looks at this many queued workloads, on clusters up to this size.
SWAP_CANDIDATES = 300
SWAP_UP_TO_NODES = 1_000
# Nodes tried per chain step (at the root, one level deeper), and queued workloads that
# may fill what a chain leaves free.
CHAIN_NODES = 16
CHAIN_NODES_DEEP = 4
SWAP_FILL = 40
# Work budget of the chains per cycle, in nodes examined (deterministic, unlike a timer).
CHAIN_BUDGET = 60_000
IMPROVE_PASSES = 3


def improve_by_swaps(cycle: Cycle, result: PassResult) -> None:
    """Local search on the chosen pass, by ejection chains.

    A queued single-replica workload may take a node from single-replica
    admissions of this cycle; those move elsewhere — into free GPUs, or, one
    level deeper, by moving others in turn — or go back to the queue. A chain
    is kept only when the margin per hour rises. Bounded: ``SWAP_CANDIDATES``
    queued workloads, ``CHAIN_NODES`` nodes tried per step, depth 2, a few
    rounds. Placement rules are the greedy's own (eligible pools, best fit, no
    overcommit); the search is skipped under an inference reserve."""
    if cycle.training_cap:
        return  # with a reserve, moving training work between products could break it
    chain = _Chain(cycle, result)
    for _ in range(3):
        if chain.budget <= 0:
            break
        improved = False
        queued = [c for c in cycle.placeable if c.rank not in result.admitted and c.workload.replicas == 1]
        queued.sort(key=lambda c: (-c.best_margin * c.workload.total_gpus, c.rank))
        for candidate in queued[:SWAP_CANDIDATES]:
            if chain.budget <= 0:
                break
            if candidate.rank in result.admitted:  # a chain before this one let it in
                continue
            mark = chain.mark()
            chain.index_residents()
            delta = chain.insert(candidate, depth=2, locked=frozenset({candidate.rank}), fill=queued[:SWAP_FILL])
            if delta is not None and delta > EPSILON:
                result.value += delta
                improved = True
            else:
                chain.rollback(mark)
        # Admissions not on their best product may get there by moving others.
        movable = [
            chain.by_rank[rank]
            for rank, admission in sorted(result.admitted.items())
            if admission.option is not chain.by_rank[rank].options[0] and chain.by_rank[rank].workload.replicas == 1 and not admission.victims
        ]
        movable.sort(key=lambda c: (chain.value(c.rank, result.admitted[c.rank].option) - chain.value(c.rank, c.options[0]), c.rank))
        for candidate in movable[:SWAP_CANDIDATES]:
            if chain.budget <= 0:
                break
            admission = result.admitted.get(candidate.rank)
            if admission is None or admission.option is candidate.options[0] or len(admission.placement) != 1:
                continue
            mark = chain.mark()
            chain.index_residents()
            before = chain.value(candidate.rank, admission.option)
            chain.evict(candidate.rank)
            delta = chain.insert(candidate, depth=2, locked=frozenset({candidate.rank}), fill=queued[:SWAP_FILL])
            if delta is not None and delta - before > EPSILON:
                result.value += delta - before
                improved = True
            else:
                chain.rollback(mark)
        if not improved:
            break


class _Chain:
    """Moves of single-replica admissions with an undo journal, for ``improve_by_swaps``."""

    def __init__(self, cycle: Cycle, result: PassResult) -> None:
        self.result = result
        self.inventory = result.inventory
        self.by_rank = {c.rank: c for c in cycle.placeable}
        self.journal: list[tuple[str, int, Admission]] = []
        self.budget = CHAIN_BUDGET // IMPROVE_PASSES

    def value(self, rank: int, option: Option) -> float:
        candidate = self.by_rank[rank]
        return (option.margin + candidate.effective_margin - candidate.best_margin) * candidate.workload.total_gpus

    def mark(self) -> int:
        return len(self.journal)

    def index_residents(self) -> None:
        """Single-replica admissions by node: what a chain may move. Built once per chain and
        checked lazily (``resides``) as moves change it."""
        self.budget -= len(self.result.admitted)
        self.residents: dict[int, list[int]] = {}
        for rank, admission in sorted(self.result.admitted.items()):
            if admission.victims or len(admission.placement) != 1 or self.by_rank[rank].workload.replicas != 1:
                continue
            self.residents.setdefault(self.inventory.index_by_name[admission.placement[0].node], []).append(rank)

    def resides(self, rank: int, index: int) -> bool:
        admission = self.result.admitted.get(rank)
        return admission is not None and self.inventory.index_by_name[admission.placement[0].node] == index

    def touched_since(self, mark: int) -> set[int]:
        """Nodes that residents left since ``mark``."""
        return {
            self.inventory.index_by_name[entry.node]
            for action, _, admission in self.journal[mark:]
            if action == "evict"
            for entry in admission.placement
        }

    def rollback(self, mark: int) -> None:
        while len(self.journal) > mark:
            action, rank, admission = self.journal.pop()
            if action == "admit":
                del self.result.admitted[rank]
                self.inventory.release(admission.placement)
            else:
                self.result.admitted[rank] = admission
                self.inventory.take(admission.placement)

    def replay(self, operations: list[tuple[str, int, Admission]]) -> None:
        for action, rank, admission in operations:
            if action == "admit":
                self.result.admitted[rank] = admission
                self.inventory.take(admission.placement)
            else:
                del self.result.admitted[rank]
                self.inventory.release(admission.placement)
            self.journal.append((action, rank, admission))

    def admit(self, rank: int, admission: Admission) -> None:
        self.replay([("admit", rank, admission)])

    def evict(self, rank: int) -> None:
        self.replay([("evict", rank, self.result.admitted[rank])])

    def insert(self, candidate: Candidate, depth: int, locked: frozenset[int], fill: Sequence[Candidate] = ()) -> float | None:
        """Admit the candidate, possibly moving others; the change in margin per hour, or
        None (nothing changed) when it cannot get in. ``fill``: queued workloads that may
        take what the moves leave free (an eviction can make room for several)."""
        g = candidate.workload.gpus_per_replica
        start = self.mark()
        free_choice: tuple[float, list] | None = None
        better_options = candidate.options
        for number, option in enumerate(candidate.options):
            placement = place_option(self.inventory, option, g, 1)
            if placement is not None:
                # place() already took the GPUs; journal it without taking twice.
                self.result.admitted[candidate.rank] = Admission(option, placement)
                self.journal.append(("admit", candidate.rank, self.result.admitted[candidate.rank]))
                if number == 0 or depth <= 0:
                    return self.value(candidate.rank, option)
                # Free GPUs only on a worse product: see whether a chain gets it a better one.
                free_choice = (self.value(candidate.rank, option), self.journal[start:])
                better_options = candidate.options[:number]
                self.rollback(start)
                break
        if depth <= 0:
            return None
        residents = self.residents
        best = free_choice
        for option in better_options:
            if option.need is not None:
                continue  # moves are counted in GPUs: a replica that needs more only goes where place() puts it
            eligible = set(option.pools)
            moves = []
            self.budget -= len(residents)
            for index in sorted(residents):
                if self.inventory.pool_of[index] not in eligible:
                    continue
                out, freed, lost = [], 0, 0.0
                here = [r for r in residents[index] if r not in locked and self.resides(r, index)]
                for rank in sorted(here, key=lambda r: (self.value(r, self.result.admitted[r].option) / self.by_rank[r].workload.total_gpus, r)):
                    if self.inventory.usable_after(index, freed) >= g:
                        break
                    out.append(rank)
                    freed += self.result.admitted[rank].placement[0].gpus
                    lost += self.value(rank, self.result.admitted[rank].option)
                if out and self.inventory.usable_after(index, freed) >= g:
                    moves.append((lost, index, out))
            moves.sort(key=lambda m: (m[0], m[1]))
            for lost, index, out in moves[: CHAIN_NODES if fill or depth >= 2 else CHAIN_NODES_DEEP]:
                mark = self.mark()
                for rank in out:
                    self.evict(rank)
                self.admit(candidate.rank, Admission(option, (PlacementEntry(node=self.inventory.nodes[index].name, gpus=g, replicas=1),)))
                delta = self.value(candidate.rank, option) - lost
                deeper = locked | set(out)
                for rank in sorted(out):
                    moved = self.insert(self.by_rank[rank], depth - 1, deeper)
                    if moved is not None:
                        delta += moved
                # Only nodes that lost residents can have room the queue has not already tried.
                room = max((self.inventory.free[i] for i in self.touched_since(mark)), default=0)
                for other in fill:
                    if other.workload.gpus_per_replica <= room and other.rank not in self.result.admitted and other.rank not in deeper:
                        placed = self.insert(other, 0, deeper)
                        if placed is not None:
                            delta += placed
                if best is None or delta > best[0] + EPSILON:
                    best = (delta, self.journal[mark:])
                self.rollback(mark)
        if best is None:
            return None
        self.replay(best[1])
        return best[0]
