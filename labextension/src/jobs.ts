/**
 * The jobs list model: merges each poll's answer into the list it already
 * has, keeping the *same object* for a job that did not change (so the view
 * re-renders only rows that changed), and shows the newest 200 with
 * "show more" so hundreds of jobs stay responsive.
 */
import { Activity } from './poller';
import { sameProgress } from './progress';
import { ACTIVE_STATES, IJob, JobState } from './types';

/** How the list and the details show a state: its label and a tooltip in words. */
export interface IStateInfo {
  label: string;
  tooltip: string;
}

/**
 * The one table of job states → label and tooltip. A new state (e.g. one held for
 * review) is one more entry here; an unknown state shows as itself.
 */
export const STATE_INFO: { readonly [state: string]: IStateInfo } = {
  staging: { label: 'staging', tooltip: 'The server reads the dataset from XNAT and encrypts it into a bundle' },
  queued: { label: 'queued', tooltip: 'Submitted to Slurm, waiting for a node' },
  running: { label: 'running', tooltip: 'The script runs on a compute node' },
  collecting: { label: 'collecting', tooltip: 'The encrypted results come back and are decrypted' },
  done: { label: 'done', tooltip: 'Finished: the results are in your workspace' },
  failed: { label: 'failed', tooltip: 'Ended without results: see the status and the log' },
  cancelled: { label: 'cancelled', tooltip: 'Cancelled: the Slurm job was stopped and the node wiped' },
  lost: { label: 'lost', tooltip: 'The server restarted while the job ran: submit it again' }
};

/** The label and tooltip of *state* (an unknown state shows its own name). */
export function stateInfo(state: JobState | string): IStateInfo {
  return STATE_INFO[state] || { label: String(state), tooltip: String(state) };
}

/**
 * The label and tooltip of a job: its state's, except for a done job whose results are
 * held for the owners' review ("held for review") or were rejected ("rejected: reason").
 */
export function jobStateInfo(job: Pick<IJob, 'state' | 'review'>): IStateInfo {
  const review = job.review;
  if (job.state === 'done' && review && review.state === 'held') {
    const who = (review.pending.length ? review.pending : review.projects).join(', ');
    return {
      label: 'held for review',
      tooltip: `The results stay encrypted until the owners of ${who} approve them (held since ${review.since})`
    };
  }
  if (job.state === 'done' && review && review.state === 'rejected') {
    return {
      label: `rejected: ${review.reason}`,
      tooltip: 'An owner of the data rejected the results; they were deleted'
    };
  }
  return stateInfo(job.state);
}

export interface IJobsDiff {
  added: string[];
  changed: string[];
  removed: string[];
}

/** Whether two records of one job differ in anything the list shows. */
export function jobChanged(a: IJob, b: IJob): boolean {
  return (
    a.state !== b.state ||
    a.updated !== b.updated ||
    a.message !== b.message ||
    a.slurm_job_id !== b.slurm_job_id ||
    a.started !== b.started ||
    a.ended !== b.ended ||
    a.exit_code !== b.exit_code ||
    !sameProgress(a.progress, b.progress) ||
    JSON.stringify(a.review ?? null) !== JSON.stringify(b.review ?? null)
  );
}

/** Compare two lists by id (pure). */
export function diffJobs(before: IJob[], after: IJob[]): IJobsDiff {
  const old = new Map(before.map(j => [j.id, j]));
  const seen = new Set<string>();
  const diff: IJobsDiff = { added: [], changed: [], removed: [] };
  for (const j of after) {
    seen.add(j.id);
    const prev = old.get(j.id);
    if (!prev) {
      diff.added.push(j.id);
    } else if (jobChanged(prev, j)) {
      diff.changed.push(j.id);
    }
  }
  for (const j of before) {
    if (!seen.has(j.id)) {
      diff.removed.push(j.id);
    }
  }
  return diff;
}

export const PAGE = 200;

export class JobListModel {
  private _jobs: IJob[] = [];
  private _limit = PAGE;
  private listeners = new Set<() => void>();

  /** All jobs, newest first. */
  get jobs(): readonly IJob[] {
    return this._jobs;
  }

  /** The jobs to render (the newest `limit`). */
  get visible(): readonly IJob[] {
    return this._jobs.slice(0, this._limit);
  }

  get hiddenCount(): number {
    return Math.max(0, this._jobs.length - this._limit);
  }

  /** Whether any job is still moving (staging, queued, running, collecting). */
  get hasActive(): boolean {
    return this._jobs.some(j => ACTIVE_STATES.has(j.state));
  }

  /** Whether any job is staging (the poller then polls fastest, for its progress). */
  get hasStaging(): boolean {
    return this._jobs.some(j => j.state === 'staging');
  }

  /** How fast the list should be polled now. */
  get activity(): Activity {
    return this.hasStaging ? 'staging' : this.hasActive ? 'active' : 'idle';
  }

  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private emit(): void {
    for (const fn of [...this.listeners]) {
      fn();
    }
  }

  /** Show the next page of older jobs. */
  showMore(): void {
    this._limit += PAGE;
    this.emit();
  }

  get(id: string): IJob | undefined {
    return this._jobs.find(j => j.id === id);
  }

  /**
   * Merge a fresh list (newest first). Unchanged jobs keep their object;
   * listeners hear about it only when something changed. Returns the diff.
   */
  update(fresh: IJob[]): IJobsDiff {
    const diff = diffJobs(this._jobs, fresh);
    if (!diff.added.length && !diff.changed.length && !diff.removed.length) {
      const sameOrder = fresh.every((j, i) => this._jobs[i] && this._jobs[i].id === j.id);
      if (sameOrder) {
        return diff;
      }
    }
    const old = new Map(this._jobs.map(j => [j.id, j]));
    const changed = new Set(diff.changed);
    this._jobs = fresh.map(j => {
      const prev = old.get(j.id);
      return prev && !changed.has(j.id) ? prev : j;
    });
    this.emit();
    return diff;
  }

  /** Put one record in (after submit or cancel) without waiting for the next poll. */
  upsert(job: IJob): void {
    const i = this._jobs.findIndex(j => j.id === job.id);
    if (i >= 0) {
      this._jobs = [...this._jobs.slice(0, i), job, ...this._jobs.slice(i + 1)];
    } else {
      this._jobs = [job, ...this._jobs];
    }
    this.emit();
  }
}
