def build_crew(context):  # replaced by the execution issue
    raise NotImplementedError
