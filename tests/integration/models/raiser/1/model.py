class TritonPythonModel:
    def execute(self, requests):
        raise ValueError("raiser always fails")
