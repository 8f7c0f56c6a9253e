/**
 * The XNAT browser's model: a lazy tree projects → subjects → experiments →
 * scans → resources (children fetched on first expand only, subjects and
 * experiments in pages with "load more"), and a checkbox selection that turns
 * into the dataset selection JSON of the REST contract.
 */
import { IExperiment, IItems, IPage, IProject, IResource, IScan, ISelectionItem, ISubject } from './types';

/** What the tree needs from the API client (XnatHpcClient satisfies it). */
export interface ITreeSource {
  projects(): Promise<IItems<IProject>>;
  subjects(project: string, offset?: number, limit?: number): Promise<IPage<ISubject>>;
  experiments(project: string, subject?: string, offset?: number, limit?: number): Promise<IPage<IExperiment>>;
  scans(project: string, experiment: string): Promise<IItems<IScan>>;
  resources(project: string, experiment: string, scan?: string): Promise<IItems<IResource>>;
}

export type NodeKind = 'project' | 'subject' | 'experiment' | 'scan' | 'resource';

export interface ITreeNode {
  /** Unique, stable key: the path of kinds and ids from the root. */
  readonly key: string;
  readonly kind: NodeKind;
  readonly label: string;
  /** Secondary text (description, date/modality, series description). */
  readonly detail: string;
  readonly role?: string;
  readonly size?: number;
  readonly fileCount?: number;
  /** The selection entry this node stands for. */
  readonly item: ISelectionItem;
  readonly parent: ITreeNode | null;
  readonly depth: number;
  readonly expandable: boolean;
  expanded: boolean;
  loading: boolean;
  error: string | null;
  /** null until loaded. */
  children: ITreeNode[] | null;
  /** For paged children: how many the server has in all. */
  total?: number;
}

type Listener = () => void;

function node(
  parent: ITreeNode | null,
  kind: NodeKind,
  id: string,
  label: string,
  item: ISelectionItem,
  extra: Partial<ITreeNode> = {}
): ITreeNode {
  return {
    key: `${parent ? parent.key + '/' : ''}${kind}:${id}`,
    kind,
    label,
    detail: '',
    item,
    parent,
    depth: parent ? parent.depth + 1 : 0,
    expandable: kind !== 'resource',
    expanded: false,
    loading: false,
    error: null,
    children: null,
    ...extra
  };
}

function resourceNode(parent: ITreeNode, r: IResource, experiment: string, scan?: string): ITreeNode {
  const name = r.label || r.id;
  const item: ISelectionItem = { project: parent.item.project, experiment, resource: name };
  if (scan !== undefined) {
    item.scan = scan;
  }
  return node(parent, 'resource', name, name, item, {
    detail: r.format || '',
    size: r.size,
    fileCount: r.file_count,
    expandable: false
  });
}

function errorText(err: unknown): string {
  return err instanceof Error && err.message ? err.message : String(err);
}

export class TreeModel {
  /** Page size for subjects and experiments (the server's default and our "load more" step). */
  readonly pageSize: number;
  roots: ITreeNode[] | null = null;
  loading = false;
  error: string | null = null;
  private selected = new Map<string, ITreeNode>();
  private listeners = new Set<Listener>();

  constructor(
    private readonly source: ITreeSource,
    pageSize = 100
  ) {
    this.pageSize = pageSize;
  }

  /** Subscribe to changes; returns the unsubscribe function. */
  subscribe(fn: Listener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private emit(): void {
    for (const fn of [...this.listeners]) {
      fn();
    }
  }

  /** Load (or reload) the project list; clears the tree and the selection. */
  async loadProjects(): Promise<void> {
    this.loading = true;
    this.error = null;
    this.emit();
    try {
      const { items } = await this.source.projects();
      this.roots = items.map(p =>
        node(null, 'project', p.id, p.id, { project: p.id }, { detail: p.name !== p.id ? p.name : '', role: p.role })
      );
      this.selected.clear();
    } catch (err) {
      this.error = errorText(err);
    } finally {
      this.loading = false;
      this.emit();
    }
  }

  /** Expand or collapse; the first expand fetches the children. */
  async toggle(n: ITreeNode): Promise<void> {
    if (!n.expandable) {
      return;
    }
    if (n.expanded) {
      n.expanded = false;
      this.emit();
      return;
    }
    n.expanded = true;
    if (n.children === null && !n.loading) {
      await this.fetchChildren(n, 0);
    } else {
      this.emit();
    }
  }

  /** Whether a paged node has more children on the server. */
  hasMore(n: ITreeNode): boolean {
    return n.children !== null && n.total !== undefined && n.children.length < n.total;
  }

  /** Fetch the next page of a paged node's children. */
  async loadMore(n: ITreeNode): Promise<void> {
    if (this.hasMore(n) && !n.loading) {
      await this.fetchChildren(n, n.children!.length);
    }
  }

  private async fetchChildren(n: ITreeNode, offset: number): Promise<void> {
    n.loading = true;
    n.error = null;
    this.emit();
    try {
      const kids = await this.children(n, offset);
      n.children = offset === 0 ? kids : [...(n.children || []), ...kids];
      // a node selected before its children arrived covers them already
    } catch (err) {
      n.error = errorText(err);
      if (offset === 0) {
        n.expanded = false;
      }
    } finally {
      n.loading = false;
      this.emit();
    }
  }

  private async children(n: ITreeNode, offset: number): Promise<ITreeNode[]> {
    const project = n.item.project;
    switch (n.kind) {
      case 'project': {
        const page = await this.source.subjects(project, offset, this.pageSize);
        n.total = page.total;
        return page.items.map(s =>
          node(n, 'subject', s.id, s.label || s.id, { project, subject: s.id }, {
            detail: [s.gender, s.yob].filter(Boolean).join(', ')
          })
        );
      }
      case 'subject': {
        const page = await this.source.experiments(project, n.item.subject, offset, this.pageSize);
        n.total = page.total;
        return page.items.map(e =>
          node(n, 'experiment', e.id, e.label || e.id, { project, experiment: e.id }, {
            detail: [e.modality, e.date].filter(Boolean).join(' · ')
          })
        );
      }
      case 'experiment': {
        const experiment = n.item.experiment!;
        const [scans, resources] = await Promise.all([
          this.source.scans(project, experiment),
          this.source.resources(project, experiment)
        ]);
        const out = scans.items.map(s => {
          const scanNode = node(n, 'scan', s.id, `${s.id}${s.type ? ' ' + s.type : ''}`, {
            project,
            experiment,
            scan: s.id
          }, {
            detail: s.series_description || s.quality || '',
            size: s.size,
            fileCount: s.file_count,
            expandable: s.resources.length > 0
          });
          // scan resources come with the scan: no extra request on expand
          scanNode.children = s.resources.map(r => resourceNode(scanNode, r, experiment, s.id));
          return scanNode;
        });
        return out.concat(resources.items.map(r => resourceNode(n, r, experiment)));
      }
      default:
        return n.children || [];
    }
  }

  /** Check or uncheck a node. Checking a node replaces selections below it. */
  setSelected(n: ITreeNode, on: boolean): void {
    if (on) {
      if (this.isCovered(n)) {
        return;
      }
      for (const key of [...this.selected.keys()]) {
        if (key.startsWith(n.key + '/')) {
          this.selected.delete(key);
        }
      }
      this.selected.set(n.key, n);
    } else {
      this.selected.delete(n.key);
    }
    this.emit();
  }

  /** Checked itself. */
  isSelected(n: ITreeNode): boolean {
    return this.selected.has(n.key);
  }

  /** Covered by a checked ancestor (shown checked and disabled). */
  isCovered(n: ITreeNode): boolean {
    for (let p = n.parent; p; p = p.parent) {
      if (this.selected.has(p.key)) {
        return true;
      }
    }
    return false;
  }

  get selectedCount(): number {
    return this.selected.size;
  }

  clearSelection(): void {
    this.selected.clear();
    this.emit();
  }

  /** The selection as POST datasets wants it: one entry per checked node, in checking order. */
  selection(): ISelectionItem[] {
    return [...this.selected.values()].map(n => ({ ...n.item }));
  }

  /** Visible rows (depth-first over expanded nodes), for a flat, virtualisable render. */
  visible(): ITreeNode[] {
    const out: ITreeNode[] = [];
    const walk = (nodes: ITreeNode[]): void => {
      for (const n of nodes) {
        out.push(n);
        if (n.expanded && n.children) {
          walk(n.children);
        }
      }
    };
    walk(this.roots || []);
    return out;
  }
}
