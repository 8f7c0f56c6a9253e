/** The dataset list model: load, create (validated), delete. */
import { validateDatasetName } from './validate';
import { IDataset, IItems, ISelectionItem } from './types';

export interface IDatasetSource {
  datasets(): Promise<IItems<IDataset>>;
  createDataset(name: string, selection: ISelectionItem[]): Promise<IDataset>;
  deleteDataset(name: string): Promise<void>;
}

export class DatasetsModel {
  items: IDataset[] = [];
  loading = false;
  error: string | null = null;
  private listeners = new Set<() => void>();

  constructor(private readonly source: IDatasetSource) {}

  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private emit(): void {
    for (const fn of [...this.listeners]) {
      fn();
    }
  }

  get names(): string[] {
    return this.items.map(d => d.name);
  }

  async refresh(): Promise<void> {
    this.loading = true;
    this.emit();
    try {
      this.items = (await this.source.datasets()).items;
      this.error = null;
    } catch (err) {
      this.error = err instanceof Error ? err.message : String(err);
    } finally {
      this.loading = false;
      this.emit();
    }
  }

  /**
   * Create a dataset. Rejects with an Error carrying the reason when the name
   * is not acceptable (no request made) or the selection is empty, and with
   * the server's ApiError otherwise.
   */
  async create(name: string, selection: ISelectionItem[]): Promise<IDataset> {
    const problem = validateDatasetName(name);
    if (problem) {
      throw new Error(problem);
    }
    if (!selection.length) {
      throw new Error('select at least one project, subject, experiment, scan or resource first');
    }
    const ds = await this.source.createDataset(name, selection);
    this.items = [ds, ...this.items.filter(d => d.name !== ds.name)];
    this.emit();
    return ds;
  }

  async remove(name: string): Promise<void> {
    await this.source.deleteDataset(name);
    this.items = this.items.filter(d => d.name !== name);
    this.emit();
  }
}
