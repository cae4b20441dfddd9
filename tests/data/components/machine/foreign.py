from somewhere_else import Thing


class Foreign(Thing):
    pass
