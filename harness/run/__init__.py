"""Running a submission: the plan, the estimate, generation with its image cache (in process or on Ray), the evaluator of one suite, thread choice and the platform fingerprint."""
