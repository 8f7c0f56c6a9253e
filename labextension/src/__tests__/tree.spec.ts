import { ITreeNode, ITreeSource, TreeModel } from '../tree';
import { IExperiment, IPage, IResource, IScan, ISubject } from '../types';

/** An in-memory XNAT behind the ITreeSource interface, recording every call. */
class FakeSource implements ITreeSource {
  calls: string[] = [];
  failNext: string | null = null;
  subjectsN = 250;

  private check(call: string): void {
    this.calls.push(call);
    if (this.failNext) {
      const msg = this.failNext;
      this.failNext = null;
      throw new Error(msg);
    }
  }

  async projects() {
    this.check('projects');
    return {
      items: [
        { id: 'NEURO_MRI', name: 'Neuro MRI', description: '', role: 'Owner' },
        { id: 'SLEEP_EEG', name: 'SLEEP_EEG', description: '', role: 'Member' }
      ]
    };
  }

  async subjects(project: string, offset = 0, limit = 100): Promise<IPage<ISubject>> {
    this.check(`subjects ${project} ${offset} ${limit}`);
    const all = Array.from({ length: this.subjectsN }, (_, i) => ({
      id: `XNAT_S${String(i).padStart(5, '0')}`,
      label: `sub-${String(i).padStart(3, '0')}`,
      project,
      gender: 'F',
      yob: '1980'
    }));
    return { items: all.slice(offset, offset + limit), total: all.length, offset, limit };
  }

  async experiments(project: string, subject?: string, offset = 0, limit = 100): Promise<IPage<IExperiment>> {
    this.check(`experiments ${project} ${subject} ${offset} ${limit}`);
    const items = [
      { id: 'XNAT_E00001', label: 'sub-000_MR1', project, subject_id: subject || '', subject_label: 'sub-000', date: '2024-01-02', modality: 'MR' }
    ];
    return { items, total: 1, offset, limit };
  }

  async scans(project: string, experiment: string): Promise<{ items: IScan[] }> {
    this.check(`scans ${project} ${experiment}`);
    const res = (label: string, scan: string): IResource => ({ id: `r${label}`, label, format: label, file_count: 2, size: 2048, scan });
    return {
      items: [
        { id: '1', type: 'T1w', series_description: 'MPRAGE', file_count: 2, size: 2048, resources: [res('NIFTI', '1')] },
        { id: '2', type: 'BOLD', file_count: 3, size: 3 * 1024 ** 2, resources: [res('NIFTI', '2'), res('DICOM', '2')] }
      ]
    };
  }

  async resources(project: string, experiment: string, scan?: string) {
    this.check(`resources ${project} ${experiment} ${scan}`);
    return { items: [{ id: 'r9', label: 'NOTES', format: 'TXT', file_count: 1, size: 10, scan: null }] };
  }
}

const find = (nodes: ITreeNode[] | null, label: string): ITreeNode => {
  const n = (nodes || []).find(x => x.label === label);
  if (!n) {
    throw new Error(`no node ${label} in ${(nodes || []).map(x => x.label)}`);
  }
  return n;
};

describe('TreeModel', () => {
  let src: FakeSource;
  let tree: TreeModel;

  beforeEach(async () => {
    src = new FakeSource();
    tree = new TreeModel(src);
    await tree.loadProjects();
  });

  it('loads projects with role badges and fetches nothing else until expanded', () => {
    expect(src.calls).toEqual(['projects']);
    expect(tree.roots!.map(n => [n.label, n.role, n.detail])).toEqual([
      ['NEURO_MRI', 'Owner', 'Neuro MRI'],
      ['SLEEP_EEG', 'Member', '']
    ]);
    expect(tree.roots!.every(n => n.children === null && !n.expanded)).toBe(true);
  });

  it('fetches children on the first expand only, pages subjects beyond 100', async () => {
    const p = find(tree.roots, 'NEURO_MRI');
    await tree.toggle(p);
    expect(src.calls).toEqual(['projects', 'subjects NEURO_MRI 0 100']);
    expect(p.children).toHaveLength(100);
    expect(p.total).toBe(250);
    expect(tree.hasMore(p)).toBe(true);

    await tree.toggle(p); // collapse
    await tree.toggle(p); // expand again: no request
    expect(src.calls).toHaveLength(2);
    expect(p.expanded).toBe(true);

    await tree.loadMore(p);
    await tree.loadMore(p);
    expect(src.calls.slice(2)).toEqual(['subjects NEURO_MRI 100 100', 'subjects NEURO_MRI 200 100']);
    expect(p.children).toHaveLength(250);
    expect(new Set(p.children!.map(c => c.key)).size).toBe(250);
    expect(tree.hasMore(p)).toBe(false);
    await tree.loadMore(p); // nothing left: no request
    expect(src.calls).toHaveLength(4);
  });

  it('expands an experiment into scans (with their resources) and session resources in one step', async () => {
    const p = find(tree.roots, 'NEURO_MRI');
    await tree.toggle(p);
    const s = p.children![0];
    await tree.toggle(s);
    expect(src.calls[src.calls.length - 1]).toBe('experiments NEURO_MRI XNAT_S00000 0 100');
    const e = s.children![0];
    expect(e.detail).toBe('MR · 2024-01-02');
    await tree.toggle(e);
    expect(src.calls.slice(-2).sort()).toEqual(['resources NEURO_MRI XNAT_E00001 undefined', 'scans NEURO_MRI XNAT_E00001']);
    expect(e.children!.map(c => `${c.kind}:${c.label}`)).toEqual(['scan:1 T1w', 'scan:2 BOLD', 'resource:NOTES']);
    const bold = e.children![1];
    expect(bold.size).toBe(3 * 1024 ** 2);
    expect(bold.fileCount).toBe(3);
    const before = src.calls.length;
    await tree.toggle(bold);
    expect(src.calls.length).toBe(before); // scan resources came with the scan
    expect(bold.children!.map(c => c.label)).toEqual(['NIFTI', 'DICOM']);
    expect(tree.visible().map(n => n.depth)).toContain(4);
  });

  it('turns checked nodes into the REST selection JSON, exactly', async () => {
    const neuro = find(tree.roots, 'NEURO_MRI');
    const sleep = find(tree.roots, 'SLEEP_EEG');
    await tree.toggle(neuro);
    const subj = neuro.children![3];
    await tree.toggle(subj);
    const exp = subj.children![0];
    await tree.toggle(exp);
    const [scan1, scan2, notes] = exp.children!;
    await tree.toggle(scan2);
    const dicom = scan2.children![1];

    tree.setSelected(sleep, true);
    tree.setSelected(subj, true);
    expect(tree.selection()).toEqual([{ project: 'SLEEP_EEG' }, { project: 'NEURO_MRI', subject: 'XNAT_S00003' }]);
    tree.setSelected(subj, false);
    tree.setSelected(scan1, true);
    tree.setSelected(dicom, true);
    tree.setSelected(notes, true);
    expect(tree.selection()).toEqual([
      { project: 'SLEEP_EEG' },
      { project: 'NEURO_MRI', experiment: 'XNAT_E00001', scan: '1' },
      { project: 'NEURO_MRI', experiment: 'XNAT_E00001', scan: '2', resource: 'DICOM' },
      { project: 'NEURO_MRI', experiment: 'XNAT_E00001', resource: 'NOTES' }
    ]);
    // every entry uses only the contract's keys
    for (const item of tree.selection()) {
      expect(Object.keys(item).every(k => ['project', 'subject', 'experiment', 'scan', 'resource'].includes(k))).toBe(true);
    }
  });

  it('checking an ancestor replaces the selections below it; covered nodes cannot be checked', async () => {
    const neuro = find(tree.roots, 'NEURO_MRI');
    await tree.toggle(neuro);
    const subj = neuro.children![0];
    await tree.toggle(subj);
    const exp = subj.children![0];
    tree.setSelected(exp, true);
    tree.setSelected(neuro.children![1], true);
    expect(tree.selectedCount).toBe(2);
    tree.setSelected(neuro, true);
    expect(tree.selection()).toEqual([{ project: 'NEURO_MRI' }]);
    expect(tree.isCovered(exp)).toBe(true);
    expect(tree.isSelected(exp)).toBe(false);
    tree.setSelected(exp, true); // ignored: already covered by the project
    expect(tree.selection()).toEqual([{ project: 'NEURO_MRI' }]);
    tree.clearSelection();
    expect(tree.selection()).toEqual([]);
  });

  it('keeps an error on the node, in words, and lets the user retry', async () => {
    const neuro = find(tree.roots, 'NEURO_MRI');
    src.failNext = 'XNAT is not reachable (503)';
    await tree.toggle(neuro);
    expect(neuro.error).toBe('XNAT is not reachable (503)');
    expect(neuro.expanded).toBe(false);
    expect(neuro.children).toBeNull();
    await tree.toggle(neuro);
    expect(neuro.error).toBeNull();
    expect(neuro.children).toHaveLength(100);
  });

  it('reports a failed project load and notifies listeners', async () => {
    const seen: number[] = [];
    tree.subscribe(() => seen.push(1));
    src.failNext = 'you are not logged in';
    await tree.loadProjects();
    expect(tree.error).toBe('you are not logged in');
    expect(seen.length).toBeGreaterThanOrEqual(2); // loading, then done
  });

  it('renders 1,000 experiments under one subject quickly (flat visible list)', async () => {
    const many = new FakeSource();
    many.experiments = async (project: string, subject?: string, offset = 0, limit = 100) => {
      const items = Array.from({ length: 1000 }, (_, i) => ({
        id: `E${i}`, label: `exp-${i}`, project, subject_id: subject || '', subject_label: 's', modality: 'MR'
      }));
      return { items: items.slice(offset, offset + limit), total: 1000, offset, limit };
    };
    const t = new TreeModel(many, 500);
    await t.loadProjects();
    const p = t.roots![0];
    await t.toggle(p);
    const s = p.children![0];
    await t.toggle(s);
    await t.loadMore(s);
    expect(s.children).toHaveLength(1000);
    const start = performance.now();
    const rows = t.visible();
    const ms = performance.now() - start;
    expect(rows.length).toBe(2 + 250 + 1000);
    expect(ms).toBeLessThan(50);
  });
});
