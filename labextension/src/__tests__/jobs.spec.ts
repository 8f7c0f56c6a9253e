import { diffJobs, JobListModel, PAGE } from '../jobs';
import { IJob, JobState } from '../types';

function job(i: number, state: JobState = 'done', updated = '2026-11-23T10:00:00Z'): IJob {
  return {
    id: `j${i.toString(16).padStart(12, '0')}`,
    user: 'alice',
    dataset: 't1',
    dataset_version: 1,
    manifest_sha256: 'a'.repeat(64),
    script: 'train.py',
    script_sha256: 'b'.repeat(64),
    resources: { partition: 'secure', cpus: 1, memory: 2 ** 31, gpus: 0, walltime: 3600 },
    state,
    slurm_job_id: String(1000 + i),
    created: '2026-11-23T09:00:00Z',
    updated,
    started: null,
    ended: null,
    exit_code: null,
    message: '',
    client_token: null
  };
}

describe('diffJobs', () => {
  it('finds added, changed and removed jobs by id', () => {
    const before = [job(3, 'running'), job(2), job(1)];
    const after = [job(4, 'staging'), { ...job(3, 'done'), updated: 'later' }, job(2)];
    expect(diffJobs(before, after)).toEqual({ added: [job(4).id], changed: [job(3).id], removed: [job(1).id] });
    expect(diffJobs(after, after.map(j => ({ ...j })))).toEqual({ added: [], changed: [], removed: [] });
  });
});

describe('JobListModel', () => {
  it('keeps the same object for unchanged jobs and notifies only on change', () => {
    const m = new JobListModel();
    let notified = 0;
    m.subscribe(() => notified++);
    m.update([job(2, 'running'), job(1)]);
    expect(notified).toBe(1);
    const [first, second] = m.jobs;

    m.update([job(2, 'running'), job(1)]); // identical poll answer: no re-render
    expect(notified).toBe(1);

    m.update([{ ...job(2, 'done'), updated: 'later' }, job(1)]);
    expect(notified).toBe(2);
    expect(m.jobs[0]).not.toBe(first);
    expect(m.jobs[0].state).toBe('done');
    expect(m.jobs[1]).toBe(second); // unchanged row keeps its identity (React.memo skips it)
  });

  it('knows whether any job is active', () => {
    const m = new JobListModel();
    m.update([job(1), job(2, 'failed')]);
    expect(m.hasActive).toBe(false);
    for (const s of ['staging', 'queued', 'running', 'collecting'] as JobState[]) {
      m.update([job(3, s), job(1)]);
      expect(m.hasActive).toBe(true);
    }
  });

  it('shows the newest 200 of hundreds, more on request', () => {
    const m = new JobListModel();
    const many = Array.from({ length: 450 }, (_, i) => job(450 - i));
    m.update(many);
    expect(m.visible).toHaveLength(PAGE);
    expect(m.visible[0].id).toBe(job(450).id);
    expect(m.hiddenCount).toBe(250);
    m.showMore();
    expect(m.visible).toHaveLength(400);
    m.showMore();
    expect(m.visible).toHaveLength(450);
    expect(m.hiddenCount).toBe(0);
  });

  it('merges a poll of 1,000 jobs in a few milliseconds', () => {
    const m = new JobListModel();
    const many = Array.from({ length: 1000 }, (_, i) => job(1000 - i, i % 10 ? 'done' : 'running'));
    m.update(many);
    const next = many.map((j, i) => (i % 50 ? { ...j } : { ...j, state: 'done' as JobState, updated: 'later' }));
    const t = performance.now();
    const diff = m.update(next);
    const ms = performance.now() - t;
    expect(diff.changed).toHaveLength(20);
    expect(ms).toBeLessThan(50);
  });

  it('upserts a submitted job at the top and replaces a cancelled one in place', () => {
    const m = new JobListModel();
    m.update([job(1, 'running')]);
    m.upsert(job(2, 'staging'));
    expect(m.jobs.map(j => j.id)).toEqual([job(2).id, job(1).id]);
    m.upsert(job(1, 'cancelled'));
    expect(m.jobs.map(j => j.state)).toEqual(['staging', 'cancelled']);
    expect(m.get(job(1).id)!.state).toBe('cancelled');
  });
});
