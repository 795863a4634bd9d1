export interface Job<T> {
  id: string;
  payload: T;
  attempts: number;
}

export class JobQueue<T> {
  private readonly jobs: Job<T>[] = [];

  constructor(private readonly maxAttempts: number = 3) {}

  push(id: string, payload: T): void {
    this.jobs.push({ id, payload, attempts: 0 });
  }

  next(): Job<T> | undefined {
    <|cursor|>
  }

  get size(): number {
    return this.jobs.length;
  }
}
