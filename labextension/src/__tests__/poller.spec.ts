import { IPoll } from '@lumino/polling';

import { DEFAULT_POLL, frequencyFor, JobsPoller } from '../poller';

const cfg = { active: 2000, idle: 15000, max: 60000 };

describe('frequencyFor', () => {
  it('polls quickly while a job is active, slowly otherwise, backing off to a ceiling', () => {
    expect(frequencyFor(true, cfg)).toEqual({ interval: 2000, backoff: true, max: 60000 });
    expect(frequencyFor(false, cfg)).toEqual({ interval: 15000, backoff: true, max: 60000 });
    expect(DEFAULT_POLL.max).toBeGreaterThanOrEqual(DEFAULT_POLL.idle);
  });
});

describe('JobsPoller', () => {
  let poller: JobsPoller | null = null;

  beforeEach(() => {
    jest.useFakeTimers();
  });
  afterEach(() => {
    poller?.dispose();
    poller = null;
    jest.useRealTimers();
    jest.restoreAllMocks();
  });

  function make(tick: () => Promise<boolean>, visible: () => boolean = () => true) {
    const states: IPoll.State<any, any, any>[] = [];
    const events = { errors: 0, recovered: 0 };
    poller = new JobsPoller({
      tick,
      isVisible: visible,
      onError: () => events.errors++,
      onRecover: () => events.recovered++,
      config: cfg
    });
    poller.poll.ticked.connect((_, s) => {
      states.push(s);
    });
    return { poller, states, events };
  }

  it('backs off exponentially while the server is down, never beyond the ceiling, and recovers', async () => {
    let up = false;
    let calls = 0;
    const { states, events } = make(async () => {
      calls++;
      if (!up) {
        throw new Error('cannot reach the Jupyter server');
      }
      return false;
    });
    jest.spyOn(Math, 'random').mockReturnValue(0.999); // the upper end of lumino's jitter
    await jest.advanceTimersByTimeAsync(10 * 60 * 1000); // a server down for ten minutes
    const rejected = states.filter(s => s.phase === 'rejected').map(s => s.interval);
    expect(rejected.length).toBeGreaterThan(3);
    expect(Math.max(...rejected)).toBe(cfg.max);
    expect(rejected.every(i => i <= cfg.max)).toBe(true);
    // grows: after the first retries each wait is at least as long as the one before
    for (let i = 2; i < rejected.length; i++) {
      expect(rejected[i]).toBeGreaterThanOrEqual(rejected[i - 1]);
    }
    // no storm: ten minutes of a dead server cost a handful of requests, not hundreds
    expect(calls).toBeLessThan(20);
    expect(events.errors).toBe(calls);

    up = true;
    const mark = states.length;
    await jest.advanceTimersByTimeAsync(cfg.max + 1);
    const after = states.slice(mark);
    expect(after[0].phase).toBe('reconnected');
    expect(after.every(s => s.interval === cfg.idle)).toBe(true); // back to the normal pace at once
    expect(events.recovered).toBe(1);
  });

  it('polls fast while a job is active and slowly once none is', async () => {
    let active = true;
    let calls = 0;
    make(async () => {
      calls++;
      return active;
    });
    await jest.advanceTimersByTimeAsync(20_000);
    expect(calls).toBeGreaterThanOrEqual(9); // every 2 s
    expect(calls).toBeLessThanOrEqual(12);
    active = false;
    await jest.advanceTimersByTimeAsync(2_100); // the tick that sees no active job switches to idle
    const atSwitch = calls;
    await jest.advanceTimersByTimeAsync(60_000);
    expect(calls - atSwitch).toBeGreaterThanOrEqual(3); // every 15 s
    expect(calls - atSwitch).toBeLessThanOrEqual(5);
  });

  it('makes no request while the panel is hidden, and resumes when shown', async () => {
    let visible = false;
    let calls = 0;
    const { poller } = make(
      async () => {
        calls++;
        return true;
      },
      () => visible
    );
    await jest.advanceTimersByTimeAsync(5 * 60 * 1000);
    expect(calls).toBe(0);
    visible = true;
    await poller.refresh();
    await jest.advanceTimersByTimeAsync(100);
    expect(calls).toBe(1);
  });

  it('stops for good when disposed', async () => {
    let calls = 0;
    const { poller } = make(async () => {
      calls++;
      return true;
    });
    await jest.advanceTimersByTimeAsync(100);
    const n = calls;
    poller.dispose();
    await jest.advanceTimersByTimeAsync(60_000);
    expect(calls).toBe(n);
    expect(poller.isDisposed).toBe(true);
  });
});
