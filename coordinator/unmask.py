"""Removing the masks from a SecAgg sum (Bonawitz et al. CCS 2017, Fig. 4, round 4, server).

``sum_{u in U3} y_u`` carries every survivor's self mask and, for each agent v
that shared but never sent its input (U2 \\ U3), the pairwise masks its surviving
neighbours added against it. The coordinator reconstructs the survivors' seeds
and the dropped agents' mask keys from the unmask shares, checks each against
what its owner committed to (a seed's SHA-256 commitment, a key's advertised
public key), regenerates those masks and subtracts them. A bad share is found
out here, and fails the session: nothing unverified reaches the model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping

from protocol.errors import WireError
from protocol.secagg import crypto, shamir
from protocol.secagg.fixedpoint import Ring, RingSpec, RingSum, add_into, decode_sum, subtract_into
from protocol.secagg.graph import Graph
from protocol.secagg.messages import Roster, Session, SharesOut, UnmaskShares


class UnmaskError(ValueError):
    """The masks cannot be removed: too few shares, or shares that reconstruct a wrong secret."""


def unmask(
    total: Ring,
    *,
    session: Session,
    ring: RingSpec,
    roster: Roster,
    graph: Graph,
    shared: Mapping[str, SharesOut],
    survivors: Collection[str],
    answers: Iterable[UnmaskShares],
    shapes: Mapping[str, tuple[int, ...]],
) -> RingSum:
    """The weighted mean delta of the survivors' inputs.

    Raises:
        UnmaskError: naming the agent whose secret could not be recovered.
    """
    index = {p.agent: i + 1 for i, p in enumerate(roster.participants)}
    mask_pk = {p.agent: p.mask_pk for p in roster.participants}
    seeds: defaultdict[str, dict[int, int]] = defaultdict(dict)
    keys: defaultdict[str, dict[int, int]] = defaultdict(dict)
    for answer in answers:
        x = index[answer.agent]
        for r in answer.seed_shares:
            seeds[r.owner][x] = r.share
        for r in answer.key_shares:
            keys[r.owner][x] = r.share
    out = total.copy()
    count, dtype, t = out.size, ring.dtype, roster.threshold
    for agent in sorted(survivors):
        seed = _recover(seeds[agent], t, f"{agent}'s self-mask seed")
        if crypto.commitment(seed, (*session.fields, agent)) != shared[agent].commitment:
            raise UnmaskError(f"{agent}'s self-mask seed does not match its commitment: bad shares")
        subtract_into(out, crypto.prg(crypto.self_key(seed, session, agent), count, dtype))
    for gone in sorted(set(shared) - set(survivors)):
        key = crypto.KeyPair(_recover(keys[gone], t, f"{gone}'s mask key"))
        if key.public != mask_pk[gone]:
            raise UnmaskError(f"{gone}'s mask key does not match its public key: bad shares")
        for agent in sorted(graph[gone] & set(survivors)):
            pair = crypto.pair_key(key.agree(mask_pk[agent]), session, agent, gone)
            mask = crypto.prg(pair, count, dtype)
            # ``agent`` added the mask if its id is the lower one, else subtracted it
            (subtract_into if agent < gone else add_into)(out, mask)
    try:
        return decode_sum(out, ring, shapes)
    except ValueError as exc:
        raise UnmaskError(f"the unmasked sum does not decode: {exc}") from None


def _recover(points: dict[int, int], threshold: int, what: str) -> bytes:
    try:
        return shamir.reconstruct(points, threshold)
    except WireError as exc:
        raise UnmaskError(f"cannot recover {what}: {exc.detail}") from None
