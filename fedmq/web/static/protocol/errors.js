/**
 * Why a peer's message was refused: the same stable strings as protocol/errors.py
 * (docs/PROTOCOL.md §8). Bad input from a peer throws WireError(reason, detail);
 * misuse by our own caller throws a plain Error / TypeError / RangeError.
 */

/** Rejection reasons, as they appear in status and metrics documents. */
export const RejectReason = Object.freeze({
  MALFORMED: 'malformed',
  BAD_VERSION: 'bad_version',
  WRONG_JOB: 'wrong_job',
  AGENT_MISMATCH: 'agent_mismatch',
  STALE: 'stale',
  WRONG_RUN: 'wrong_run',
  FUTURE_ROUND: 'future_round',
  BASE_MISMATCH: 'base_mismatch',
  DUPLICATE: 'duplicate',
  UNKNOWN_AGENT: 'unknown_agent',
  NOT_IN_COHORT: 'not_in_cohort',
  TENSOR_MISMATCH: 'tensor_mismatch',
  NON_FINITE: 'non_finite',
  TOO_LARGE: 'too_large',
  BAD_CODEC: 'bad_codec',
  NO_ROUND: 'no_round',
  UNSIGNED: 'unsigned',
  BAD_SIGNATURE: 'bad_signature',
});

/** A peer sent something we refuse. Never a bug on our side. */
export class WireError extends Error {
  /** @param {string} reason a RejectReason value  @param {string} detail */
  constructor(reason, detail) {
    super(`${reason}: ${detail}`);
    this.name = 'WireError';
    this.reason = reason;
    this.detail = detail;
  }
}

/** Throw WireError(reason, detail). */
export function fail(reason, detail) {
  throw new WireError(reason, detail);
}
