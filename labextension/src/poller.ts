/**
 * One poller for the jobs list (`@lumino/polling` Poll): quick while a job is
 * active, slow when none is, exponential backoff with jitter on errors capped
 * at a maximum (a restarting server sees a trickle, not a storm), and standby
 * while the panel is hidden.
 */
import { IPoll, Poll } from '@lumino/polling';

export interface IPollConfig {
  /** ms between polls while a job is staging (its progress moves; the server updates it ≤ 4/s). */
  staging?: number;
  /** ms between polls while a job is active. */
  active: number;
  /** ms between polls when no job is active. */
  idle: number;
  /** Backoff ceiling in ms. */
  max: number;
}

export const DEFAULT_POLL: IPollConfig = { staging: 250, active: 500, idle: 15000, max: 60000 };

/** What the jobs list holds: a staging job, another active job, or nothing moving. */
export type Activity = 'staging' | 'active' | 'idle';

function asActivity(a: boolean | Activity): Activity {
  return a === true ? 'active' : a === false ? 'idle' : a;
}

/** The poll frequency for the current situation (pure; `true`/`false` mean active/idle). */
export function frequencyFor(activity: boolean | Activity, cfg: IPollConfig = DEFAULT_POLL): IPoll.Frequency {
  const a = asActivity(activity);
  const interval = a === 'staging' ? (cfg.staging ?? Math.min(cfg.active, DEFAULT_POLL.staging!)) : a === 'active' ? cfg.active : cfg.idle;
  return { interval, backoff: true, max: cfg.max };
}

export interface IJobsPollerOptions {
  /** Fetch once; resolves whether any job is active, or the activity (rejects on error). */
  tick: () => Promise<boolean | Activity>;
  /** Whether the view is visible (false → standby, no requests). */
  isVisible: () => boolean;
  /** Called with each error (for the status line). */
  onError?: (err: unknown) => void;
  /** Called after a success that follows errors. */
  onRecover?: () => void;
  config?: IPollConfig;
}

export class JobsPoller {
  readonly poll: Poll;
  private activity: Activity = 'idle';
  private readonly cfg: IPollConfig;

  constructor(options: IJobsPollerOptions) {
    this.cfg = options.config || DEFAULT_POLL;
    this.poll = new Poll({
      auto: true,
      name: 'xnat-hpc:jobs',
      frequency: frequencyFor(false, this.cfg),
      standby: () => !options.isVisible() || 'when-hidden',
      factory: async () => {
        let active: boolean | Activity;
        try {
          active = await options.tick();
        } catch (err) {
          options.onError?.(err);
          throw err;
        }
        if (this.poll.state.phase === 'rejected') {
          options.onRecover?.();
        }
        this.setActive(active);
        return active;
      }
    });
  }

  /** Switch between the staging, active and idle frequency. */
  setActive(active: boolean | Activity): void {
    const a = asActivity(active);
    if (a !== this.activity) {
      this.activity = a;
      this.poll.frequency = frequencyFor(a, this.cfg);
    }
  }

  /** Poll now (after a submit, a cancel, or when the panel is shown). */
  refresh(): Promise<void> {
    return this.poll.refresh();
  }

  get isDisposed(): boolean {
    return this.poll.isDisposed;
  }

  dispose(): void {
    this.poll.dispose();
  }
}
