def check(binary, report):
    pass
