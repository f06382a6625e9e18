"""The CPU's algo="auto" rule: a decision tree per conv op over the layer's
geometry (fastconv.implementations.conv2d.FEATURES), fitted by benchmarks/fit_dispatch.py; do not
edit it by hand, rerun that.

Fitted on dispatch-cpu.csv: 2072 timings of AMD EPYC (family 26 model 2) (avx512).
Geomean slowdown against the fastest algorithm of each measured layer (1.000x: always the
fastest), of this rule and of each algorithm alone:
    conv2d: the rule 1.035x, blocked 1.322x, depthwise (some layers only), direct 3.916x, im2col
        1.541x, winograd (some layers only)
    conv2d_backward_input: the rule 1.015x, blocked 1.571x, depthwise (some layers only), direct
        4.289x, im2col 1.411x, winograd (some layers only)
    conv2d_backward_weight: the rule 1.022x, blocked 1.926x, depthwise (some layers only),
        direct 17.744x, im2col 1.295x
"""

RULE = {'conv2d': {'feature': 'window',
            'threshold': 9,
            'below': {'feature': 'taps',
                      'threshold': 160,
                      'below': {'feature': 'stride',
                                'threshold': 4,
                                'below': 'im2col',
                                'at_least': 'blocked'},
                      'at_least': {'feature': 'channels',
                                   'threshold': 64,
                                   'below': 'blocked',
                                   'at_least': 'im2col'}},
            'at_least': {'feature': 'channels',
                         'threshold': 16,
                         'below': {'feature': 'groups',
                                   'threshold': 96,
                                   'below': 'direct',
                                   'at_least': ['depthwise', 'direct']},
                         'at_least': {'feature': 'pixels',
                                      'threshold': 49,
                                      'below': 'im2col',
                                      'at_least': 'blocked'}}},
 'conv2d_backward_input': {'feature': 'in_channels',
                           'threshold': 16,
                           'below': {'feature': 'channels',
                                     'threshold': 6,
                                     'below': {'feature': 'pixels',
                                               'threshold': 784,
                                               'below': ['depthwise', 'direct'],
                                               'at_least': 'direct'},
                                     'at_least': {'feature': 'taps',
                                                  'threshold': 150,
                                                  'below': 'im2col',
                                                  'at_least': 'direct'}},
                           'at_least': {'feature': 'window',
                                        'threshold': 9,
                                        'below': 'im2col',
                                        'at_least': {'feature': 'pixels',
                                                     'threshold': 16,
                                                     'below': 'im2col',
                                                     'at_least': 'blocked'}}},
 'conv2d_backward_weight': {'feature': 'in_channels',
                            'threshold': 32,
                            'below': {'feature': 'taps',
                                      'threshold': 144,
                                      'below': {'feature': 'channels',
                                                'threshold': 6,
                                                'below': ['depthwise', 'direct'],
                                                'at_least': 'im2col'},
                                      'at_least': {'feature': 'taps',
                                                   'threshold': 400,
                                                   'below': 'blocked',
                                                   'at_least': 'im2col'}},
                            'at_least': {'feature': 'in_channels',
                                         'threshold': 160,
                                         'below': {'feature': 'threads',
                                                   'threshold': 2,
                                                   'below': 'im2col',
                                                   'at_least': 'blocked'},
                                         'at_least': 'im2col'}}}
