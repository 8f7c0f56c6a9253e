/**
 * One poller for the jobs list (`@lumino/polling` Poll): quick while a job is
 * active, slow when none is, exponential backoff with jitter on errors capped
 * at a maximum (a restarting server sees a trickle, not a storm), and standby
 * while the panel is hidden.
 */
import { IPoll, Poll } from '@lumino/polling';

export interface IPollConfig {
  /** ms between polls while a job is active. */
  active: number;
  /** ms between polls when no job is active. */
  idle: number;
  /** Backoff ceiling in ms. */
  max: number;
}

export const DEFAULT_POLL: IPollConfig = { active: 500, idle: 15000, max: 60000 };

/** The poll frequency for the current situation (pure). */
export function frequencyFor(active: boolean, cfg: IPollConfig = DEFAULT_POLL): IPoll.Frequency {
  return { interval: active ? cfg.active : cfg.idle, backoff: true, max: cfg.max };
}

export interface IJobsPollerOptions {
  /** Fetch once; resolves whether any job is active (rejects on error). */
  tick: () => Promise<boolean>;
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
  private active = false;
  private readonly cfg: IPollConfig;

  constructor(options: IJobsPollerOptions) {
    this.cfg = options.config || DEFAULT_POLL;
    this.poll = new Poll({
      auto: true,
      name: 'xnat-hpc:jobs',
      frequency: frequencyFor(false, this.cfg),
      standby: () => !options.isVisible() || 'when-hidden',
      factory: async () => {
        let active: boolean;
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

  /** Switch between the active and idle frequency. */
  setActive(active: boolean): void {
    if (active !== this.active) {
      this.active = active;
      this.poll.frequency = frequencyFor(active, this.cfg);
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
