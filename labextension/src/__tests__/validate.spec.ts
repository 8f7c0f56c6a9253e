import { ILimits } from '../types';
import { DATASET_NAME_RE, defaultForm, validateDatasetName, validateForm, validateScriptPath } from '../validate';

describe('validateDatasetName (same rule as the server)', () => {
  it('matches the server regex source', () => {
    // xnat_bridge/datasets.py: NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}$")
    expect(DATASET_NAME_RE.source).toBe('^[A-Za-z0-9][A-Za-z0-9 _.\\-]{0,63}$');
  });
  it.each(['t1', 'T1 baseline', 'sleep_eeg-2026.v2', 'a', 'x'.repeat(64), '0day'])('accepts %p', name => {
    expect(validateDatasetName(name)).toBeNull();
  });
  it.each([
    '',
    ' lead',
    'trail ',
    '-dash',
    '.hidden',
    '../etc',
    'a/b',
    'semi;colon',
    'ünïcode',
    'tab\tname',
    'new\nline',
    '<script>',
    'x'.repeat(65)
  ])('rejects %p with a message', name => {
    const msg = validateDatasetName(name);
    expect(msg).not.toBeNull();
    expect(msg).toMatch(/name/);
  });
});

const limits: ILimits = {
  partition: 'secure',
  partitions: ['secure'],
  max_cpus: 8,
  max_memory: 32 * 1024 ** 3,
  max_gpus: 1,
  max_walltime: 4 * 3600,
  default_cpus: 2,
  default_memory: 4 * 1024 ** 3,
  default_gpus: 0,
  default_walltime: 3600,
  exclusive: true,
  account: null,
  qos: null
};

describe('defaultForm', () => {
  it('fills the admin defaults and the chosen script', () => {
    expect(defaultForm(limits, { script: 'models/train.py' })).toEqual({
      dataset: '',
      script: 'models/train.py',
      partition: 'secure',
      cpus: '2',
      memory: '4G',
      gpus: '0',
      walltime: '1:00:00'
    });
  });
  it('falls back to the first listed partition', () => {
    expect(defaultForm({ ...limits, partition: 'x', partitions: ['secure', 'gpu'] }).partition).toBe('secure');
  });
});

describe('validateForm', () => {
  const ok = { ...defaultForm(limits, { script: 'train.py' }), dataset: 't1' };

  it('builds the request body (bytes, seconds) when everything is within limits', () => {
    const { errors, request } = validateForm({ ...ok, cpus: '8', memory: '32G', gpus: '1', walltime: '4:00:00' }, limits, ['t1']);
    expect(errors).toEqual({});
    expect(request).toEqual({
      dataset: 't1',
      script: 'train.py',
      partition: 'secure',
      cpus: 8,
      memory: 32 * 1024 ** 3,
      gpus: 1,
      walltime: 14400
    });
  });

  it('reports every violation at once, naming the limit', () => {
    const { errors, request } = validateForm(
      { ...ok, cpus: '9', memory: '33G', gpus: '2', walltime: '4:00:01', partition: 'interactive' },
      limits,
      ['t1']
    );
    expect(request).toBeUndefined();
    expect(errors.cpus).toBe('CPUs must be at most 8 (the limit for this partition)');
    expect(errors.memory).toMatch(/at most 32G/);
    expect(errors.gpus).toMatch(/at most 1/);
    expect(errors.walltime).toBe('walltime must be at most 4:00:00');
    expect(errors.partition).toBe('partition must be one of secure');
  });

  it('rejects malformed numbers and amounts', () => {
    const { errors } = validateForm({ ...ok, cpus: '1.5', memory: 'lots', gpus: '-1', walltime: 'soon' }, limits);
    expect(errors.cpus).toMatch(/whole number/);
    expect(errors.gpus).toMatch(/whole number/);
    expect(errors.memory).toMatch(/like 4G/);
    expect(errors.walltime).toMatch(/like 1:00:00/);
    expect(validateForm({ ...ok, cpus: '0' }, limits).errors.cpus).toBe('CPUs must be at least 1');
  });

  it('needs a known dataset and a workspace .py script', () => {
    expect(validateForm({ ...ok, dataset: '' }, limits).errors.dataset).toBe('choose a dataset');
    expect(validateForm({ ...ok, dataset: 'gone' }, limits, ['t1']).errors.dataset).toMatch(/no dataset named/);
    expect(validateForm({ ...ok, script: '' }, limits).errors.script).toBe('choose a training script');
  });

  it('has no maximum where the admin set none', () => {
    const open = { ...limits, max_cpus: null, max_memory: null, max_gpus: null, max_walltime: null };
    const { errors, request } = validateForm({ ...ok, cpus: '512', memory: '2T', gpus: '16', walltime: '7-00:00:00' }, open);
    expect(errors).toEqual({});
    expect(request!.walltime).toBe(7 * 86400);
  });
});

describe('validateScriptPath', () => {
  it.each(['train.py', 'a/b/train.py', ' train.py '])('accepts %p', p => expect(validateScriptPath(p)).toBeNull());
  it.each([
    ['/etc/passwd.py', /inside your workspace/],
    ['../other/train.py', /inside your workspace/],
    ['a/../../x.py', /inside your workspace/],
    ['train.sh', /Python file/],
    ['', /choose/]
  ])('rejects %p', (p, why) => expect(validateScriptPath(p)).toMatch(why));
});
